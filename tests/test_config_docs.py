"""The README's config reference is generated from the reference configs' comments."""
from muse_jax import config_docs


def test_every_reference_config_key_has_a_comment():
    assert config_docs.undocumented() == []


def test_readme_config_reference_is_current():
    text = config_docs.README.read_text()
    assert config_docs.updated_readme(text) == text, \
        "README.md is out of date: run python -m muse_jax.config_docs"


def test_a_key_comment_comes_from_its_line_or_the_lines_above(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(
        "def get_config(arg=None):\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.a = ml_collections.ConfigDict()\n"
        "    # the block comment\n"
        "    # goes on\n"
        "    c.a.x = 1\n"
        "    c.a.y = 'z'  # trailing wins\n"
        "    if arg == 'v':\n"
        "        c.a.x = 2  # a variant, not the reference\n"
        "    return c\n")
    assert config_docs.comments(path) == {"a.x": "the block comment goes on",
                                          "a.y": "trailing wins"}
