"""Quality metrics of the paper (FID, CLIP score, rFID, LPIPS, PSNR), run by muse_jax.evaluate."""
