"""Build the tiny recipe's raw crawl: a WARC of HTML pages rendered from the documentation that ships with Python
itself, dressed as a website with navigation and footers:

- the language reference (pydoc's topics: the `for` statement, name binding, ...), one page per topic;
- the library reference: each standard module's docstring and the docstrings of its public classes and functions;
- and what real crawls hold too: mirrored (exact duplicate) and old-revision (near-duplicate) pages, API index pages
  that are mostly symbols, link-farm spam, pages too short to keep, a contact page with personal data to redact, and
  pages in other languages.

Deterministic: the same Python gives the same bytes. Usage: python make_crawl.py OUT.warc.gz [--modules N]
"""

from __future__ import annotations

import argparse
import contextlib
import html
import importlib
import inspect
import io
import os
import pydoc
import random
import re
import sys
import uuid
import warnings
from datetime import datetime
from pydoc_data.topics import topics as LANGUAGE_TOPICS

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

SITE = "https://docs.python.example"
# Memory addresses in reprs ("at 0x7f..", "handle 7f..") differ between runs; drop them so the crawl is reproducible.
ADDRESS = re.compile(r"(&nbsp;| )(at|handle)(&nbsp;| )(0x)?[0-9a-f]{8,}")
# Modules whose import has side effects (opening windows, printing, starting things) or that are not docs.
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "lib2to3", "ensurepip", "venv",
        "test", "pydoc_data", "xxsubtype", "xxlimited", "msilib", "winreg", "winsound", "nt", "msvcrt"}  # fmt: skip
MIN_LIBRARY_WORDS = 150  # a module page with less documentation than this is not worth a page

NAV = (
    '<header><nav><a href="/">Home</a> | <a href="/lib/">Library</a> | <a href="/search">Search</a> | '
    '<a href="/about">About</a> | <a href="/login">Log in</a></nav></header>'
)
FOOTER = (
    "<footer><p>&copy; 2026 docs.python.example. All rights reserved. Privacy policy. Terms of use. "
    "Cookie settings.</p></footer>"
)

SPAM = (
    "BUY CHEAP WATCHES NOW best price best price best price click here click here free shipping "
    "casino bonus win win win limited offer limited offer "
)

OTHER_LANGUAGES = {
    "de": "Die Standardbibliothek von Python enthält viele Module, die alltägliche Aufgaben erleichtern. "
    "Mit ihnen kann man Dateien lesen und schreiben, mit Netzwerken arbeiten, Texte verarbeiten und Daten "
    "speichern. Wer eine neue Sprache lernt, sollte zuerst die Dokumentation lesen und kleine Beispiele "
    "ausprobieren, bevor er größere Programme schreibt. Viele Entwickler schätzen die klare Struktur der "
    "Dokumentation, weil jede Funktion mit einem kurzen Beispiel erklärt wird und die Beschreibung genau sagt, "
    "welche Argumente erwartet werden und welche Ausnahmen auftreten können. ",
    "fr": "La bibliothèque standard de Python contient de nombreux modules qui simplifient les tâches "
    "quotidiennes. Ils permettent de lire et d'écrire des fichiers, de travailler avec les réseaux, de traiter "
    "du texte et de stocker des données. Quand on apprend un nouveau langage, il vaut mieux lire d'abord la "
    "documentation et essayer de petits exemples avant d'écrire des programmes plus grands. Beaucoup de "
    "développeurs apprécient la structure claire de la documentation, car chaque fonction est expliquée avec "
    "un court exemple et la description indique les arguments attendus et les exceptions possibles. ",
}


@contextlib.contextmanager
def neutral_process_state():
    """The os and sys pages print os.environ and sys.argv: render them from a fixed, empty-ish state so the crawl
    neither leaks this machine's environment nor changes from one run to the next."""
    saved_env, saved_argv, saved_orig = dict(os.environ), sys.argv, sys.orig_argv
    os.environ.clear()
    os.environ.update({"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    sys.argv = sys.orig_argv = ["python"]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv, sys.orig_argv = saved_argv, saved_orig


def text_to_html(text: str) -> str:
    """pydoc's plain-text topics as HTML: underlined headings, paragraphs, indented blocks as code."""
    out = []
    for block in re.split(r"\n\s*\n", text.strip()):
        lines = block.splitlines()
        if len(lines) == 2 and set(lines[1].strip()) <= set("*=-~^") and lines[1].strip():
            out.append(f"<h2>{html.escape(lines[0].strip())}</h2>")
        elif all(line.startswith("   ") for line in lines):
            out.append(f"<pre>{html.escape(chr(10).join(lines))}</pre>")
        else:
            out.append(f"<p>{html.escape(' '.join(line.strip() for line in lines))}</p>")
    return "".join(out)


def reference_pages() -> list[tuple[str, str, str]]:
    """(path, title, body HTML) for each topic of the language reference; its heading becomes the page title."""
    pages = []
    for name, text in sorted(LANGUAGE_TOPICS.items()):
        title, _, rest = text.strip().partition("\n")
        pages.append((f"reference/{name.lower()}.html", title, text_to_html(rest.lstrip("*=-~^ \n"))))
    return pages


def library_pages(limit: int) -> list[tuple[str, str, str]]:
    """(path, title, body HTML) for standard modules: the module's docstring, then each public class and function."""
    pages = []
    with neutral_process_state(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reading deprecated aliases (typing.io, ...) warns
        for name, module in _stdlib_modules():
            sections = [text_to_html(inspect.getdoc(module) or "")]
            words = len((inspect.getdoc(module) or "").split())
            seen = set()
            for attr, value in sorted(vars(module).items()):
                # the object's own docstring: inspect.getdoc would repeat a parent class's on every subclass
                own = getattr(value, "__doc__", None) if getattr(value, "__module__", None) == name else None
                doc = inspect.cleandoc(own) if isinstance(own, str) else ""
                if attr.startswith("_") or not doc or doc in seen:
                    continue
                seen.add(doc)
                sections.append(f"<h2>{html.escape(attr)}</h2>{text_to_html(doc)}")
                words += len(doc.split())
            if words >= MIN_LIBRARY_WORDS:
                pages.append((f"lib/{name}.html", f"{name} — Python documentation", "".join(sections)))
            if len(pages) >= limit:
                break
    return pages


def api_index_pages(count: int) -> list[tuple[str, str, str]]:
    """pydoc's full HTML listing of a few modules: signatures and symbols, little prose (quality rules drop them)."""
    small = [
        name for name in ("bisect", "colorsys", "keyword", "stat", "token") if name in sys.stdlib_module_names
    ]
    with neutral_process_state():
        return [(f"api/{name}.html", f"{name} API index", ADDRESS.sub("", pydoc.html.document(importlib.import_module(name), name)))
                for name in small[:count]]  # fmt: skip


def _stdlib_modules():
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in SKIP:
            continue
        try:
            with warnings.catch_warnings(), io.StringIO() as sink:
                warnings.simplefilter("ignore")
                stdout, sys.stdout = sys.stdout, sink  # some modules print on import
                try:
                    module = importlib.import_module(name)
                finally:
                    sys.stdout = stdout
        except Exception:  # platform-specific or optional modules: not part of this crawl
            continue
        yield name, module


def quiz_page() -> str:
    """Questions of the held-out arithmetic task (llmforge's bundled eval) with their answers, as a tutorial."""
    from llmforge.evaluation.arithmetic import problems

    intro = ("<p>The interactive interpreter is a handy calculator. Start Python, type an expression after the "
             "prompt and press enter: the interpreter evaluates it and prints the result. Try these questions "
             "yourself before reading the answers, then check them in your own session.</p>"
             "<p>Every answer below is what the interpreter itself would print. There is nothing to import and "
             "nothing to install: the operators for addition, subtraction, multiplication and division are part "
             "of the language, and the interpreter follows the usual rules of precedence, so multiplication is "
             "done before addition unless parentheses say otherwise. Integers in Python have no fixed size, which "
             "means that the result of an addition is always exact, however large the numbers become.</p>")  # fmt: skip
    outro = ("<p>If your answers differ from the ones shown here, look again at the expression you typed: a "
             "missing operator or an extra digit is the most common mistake. When you are comfortable with these "
             "questions, move on to the next chapter of the tutorial, which explains variables, assignment and "
             "the names that the interpreter keeps for you between one line and the next.</p>")  # fmt: skip
    replies = ["The interpreter prints {s}.", "Adding {a} and {b} gives {s}.", "You should see {s} on the next line.",
               "The result shown is {s}.", "Python answers {s} at once.", "It evaluates to {s}, as expected."]  # fmt: skip
    items = "".join(f"<p>{p.question} {replies[i % len(replies)].format(a=p.a, b=p.b, s=p.answer)}</p>"
                    for i, p in enumerate(problems("eval")[:8]))  # fmt: skip
    return intro + items + outro


def dress(title: str, body: str) -> str:
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title></head><body>"
        f"{NAV}<div class='document'><h1>{title}</h1>{body}</div>{FOOTER}</body></html>"
    )


def build(modules: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pages = reference_pages() + library_pages(modules)
    records = [(f"{SITE}/{path}", dress(title, body)) for path, title, body in pages]
    # mirrors: the same page under another host (exact duplicates after extraction)
    for path, title, body in rng.sample(pages, len(pages) // 10):
        records.append((f"https://mirror.python.example/{path}", dress(title, body)))
    # near-duplicates: an old revision of a page with one paragraph added
    for path, title, body in rng.sample(pages, len(pages) // 10):
        note = "<p>Note: this page describes an older release; some details may have changed since then.</p>"
        records.append((f"{SITE}/2.7/{path}", dress(title + " (2.7)", note + body)))
    for path, title, body in api_index_pages(5):
        records.append((f"{SITE}/{path}", dress(title, body)))
    # link-farm spam and near-empty pages, which quality filters must remove
    for number in range(max(2, len(pages) // 20)):
        records.append((f"https://cheap-deals.example/p{number}.html", dress("Deals", f"<p>{SPAM * 40}</p>")))
        records.append((f"{SITE}/redirect/{number}.html", dress("Moved", "<p>This page has moved.</p>")))
    # a quiz page that leaks items of the bundled eval tasks: decontamination must remove it
    records.append((f"{SITE}/tutorial/quiz.html", dress("Arithmetic in the interpreter", quiz_page())))
    # a contact page with personal data that must be redacted
    contact = (
        "<p>Questions about the documentation can be sent to the editors. Write to docs-team@python.example or "
        "call +1 415 555 0132 during office hours. Our build server at 192.168.10.24 rebuilds the pages every "
        "night from the sources of the standard library, and every page lists the module it documents, its "
        "functions, classes and constants, with the docstrings written by the authors of each module.</p>"
    ) * 3
    records.append((f"{SITE}/contact.html", dress("Contact", contact)))
    for lang, text in OTHER_LANGUAGES.items():
        records.append(
            (
                f"{SITE}/{lang}/index.html",
                dress(lang, f"<p>{text * 2}</p>").replace("lang='en'", f"lang='{lang}'"),
            )
        )
    return records


def write_warc(records: list[tuple[str, str]], path: str) -> None:
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=path.endswith(".gz"))
        date = datetime(2026, 11, 1).strftime("%Y-%m-%dT%H:%M:%SZ")
        for url, html in records:
            payload = html.encode("utf-8")
            headers = StatusAndHeaders(
                "200 OK", [("Content-Type", "text/html; charset=utf-8")], protocol="HTTP/1.1"
            )
            record = writer.create_warc_record(url, "response", payload=io.BytesIO(payload), http_headers=headers,
                                               warc_headers_dict={"WARC-Date": date, "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>"})  # fmt: skip
            writer.write_record(record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--modules", type=int, default=400, help="standard modules to render (at most)")
    args = parser.parse_args()
    records = build(args.modules)
    write_warc(records, args.out)
    print(f"{args.out}: {len(records)} pages", file=sys.stderr)


if __name__ == "__main__":
    main()
