"""The schematic diagrams (tools/diagrams.py): the committed SVGs are what the code
draws, and each is shown in the book, with its alt text, where its idea is taught."""

from pathlib import Path

from tools import diagrams

BOOK = Path(__file__).resolve().parent.parent / "book"


def test_the_committed_diagrams_are_what_the_code_draws():
    assert diagrams.main(["--check"]) == 0


def test_every_diagram_is_shown_with_its_alt_text():
    pages = "".join(
        p.read_text(encoding="utf-8")
        for p in [*BOOK.glob("*.ipynb"), *BOOK.glob("*.md")]
    )
    assert len(diagrams.DIAGRAMS) >= 8
    for name, (_, alt) in diagrams.DIAGRAMS.items():
        shown = f"![{alt}](images/{name}.svg)"
        assert shown in pages, name
