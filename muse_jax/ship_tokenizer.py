"""Makes a trained shapes tokenizer run the one muse_jax ships (muse_jax/shipped_tokenizer.py).

    python -m muse_jax.demo --train_tokenizer --workdir=workdirs/demo_trained  # or muse_jax.train
    python -m muse_jax.ship_tokenizer --workdir=workdirs/demo_trained/vqgan_shapes

Writes the run's latest weights, its config.json and a provenance record (its held-out PSNR
and codebook use) to muse_jax/assets/vqgan_shapes_demo/; `make demo` installs them.
"""
from pathlib import Path

from absl import flags

from muse_jax import errors, shipped_tokenizer
from muse_jax.errors import UserError

FLAGS = flags.FLAGS


def main(argv) -> None:
    if len(argv) > 1:
        raise UserError(f"unexpected arguments: {' '.join(argv[1:])}")
    out = Path(FLAGS.out)
    record = shipped_tokenizer.export(FLAGS.workdir, out)
    print(f"wrote {out}: step {record['step']}, {record['eval_psnr']:.2f} dB, "
          f"{record['eval_codebook_usage']:.1%} of the codebook in use")


if __name__ == "__main__":
    flags.DEFINE_string("workdir", None, "The tokenizer run to ship (its latest checkpoint).",
                        required=True)
    flags.DEFINE_string("out", str(shipped_tokenizer.ASSET), "Where the shipped files go.")
    errors.run(main)
