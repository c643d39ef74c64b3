"""Web pages and WARC files for tests: real HTML structure around generated prose, deterministic per seed.

A page is what a crawler fetched: navigation, a cookie banner, the article, a sidebar of links and a footer.
Trafilatura should keep only the article. Prose comes in several languages from small vocabularies of real words
arranged into simple sentences, so language ID and the quality rules judge it like real text, and every seed
gives a different page (no accidental duplicates). `near_duplicate` edits a text so that its 5-gram Jaccard
similarity to the original lands where a test wants it.

    pages = [article("https://news.example/a", seed=1), spam_page("https://cheap.example/"), ...]
    write_warc(tmp_path / "crawl.warc.gz", pages)
"""

from __future__ import annotations

import io
import random
import uuid
from dataclasses import dataclass
from html import escape
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

VOCABULARY = {
    "en": {
        "det": ["the", "a", "every", "this", "that", "our", "their"],
        "noun": ["council", "river", "teacher", "garden", "market", "library", "engineer", "village", "museum",
                 "bridge", "student", "harbour", "farmer", "hospital", "orchestra", "company", "island", "forest",
                 "report", "railway", "festival", "kitchen", "painter", "school", "winter", "journey", "mountain",
                 "newspaper", "family", "computer", "language", "window", "theatre", "doctor", "scientist"],
        "verb": ["visited", "described", "repaired", "opened", "built", "praised", "studied", "discovered",
                 "photographed", "welcomed", "planned", "measured", "painted", "cleaned", "followed", "explained",
                 "protected", "celebrated", "questioned", "supported"],
        "adj": ["old", "quiet", "famous", "narrow", "bright", "modern", "small", "ancient", "busy", "green",
                "remarkable", "careful", "northern", "wooden", "generous", "curious", "local", "patient"],
        "link": ["and", "while", "because", "although", "after", "before", "so", "but"],
        "adv": ["yesterday", "slowly", "together", "again", "carefully", "in the morning", "last year",
                "with great care", "for the first time", "during the storm"],
    },
    "de": {
        "det": ["der", "die", "das", "ein", "eine", "jeder", "unser"],
        "noun": ["Rat", "Fluss", "Lehrer", "Garten", "Markt", "Bibliothek", "Ingenieur", "Dorf", "Museum",
                 "Brücke", "Schüler", "Hafen", "Bauer", "Krankenhaus", "Orchester", "Firma", "Insel", "Wald",
                 "Bericht", "Bahnhof", "Fest", "Küche", "Maler", "Schule", "Winter", "Reise", "Berg", "Zeitung"],
        "verb": ["besuchte", "beschrieb", "reparierte", "öffnete", "baute", "lobte", "untersuchte", "entdeckte",
                 "fotografierte", "begrüßte", "plante", "vermaß", "malte", "reinigte", "erklärte", "schützte"],
        "adj": ["alte", "ruhige", "berühmte", "schmale", "helle", "moderne", "kleine", "uralte", "grüne",
                "bemerkenswerte", "sorgfältige", "hölzerne", "großzügige", "neugierige", "örtliche"],
        "link": ["und", "während", "weil", "obwohl", "nachdem", "bevor", "aber", "denn"],
        "adv": ["gestern", "langsam", "gemeinsam", "wieder", "sorgfältig", "am Morgen", "im letzten Jahr",
                "mit großer Sorgfalt", "zum ersten Mal", "während des Sturms"],
    },
    "fr": {
        "det": ["le", "la", "un", "une", "chaque", "notre", "leur"],
        "noun": ["conseil", "rivière", "professeur", "jardin", "marché", "bibliothèque", "ingénieur", "village",
                 "musée", "pont", "étudiant", "port", "fermier", "hôpital", "orchestre", "entreprise", "île",
                 "forêt", "rapport", "gare", "festival", "cuisine", "peintre", "école", "hiver", "voyage"],
        "verb": ["a visité", "a décrit", "a réparé", "a ouvert", "a construit", "a loué", "a étudié",
                 "a découvert", "a photographié", "a accueilli", "a préparé", "a mesuré", "a peint", "a nettoyé",
                 "a expliqué", "a protégé"],
        "adj": ["ancien", "calme", "célèbre", "étroit", "lumineux", "moderne", "petit", "vert", "remarquable",
                "soigneux", "généreux", "curieux", "local", "patient"],
        "link": ["et", "pendant que", "parce que", "bien que", "après que", "mais", "car"],
        "adv": ["hier", "lentement", "ensemble", "encore", "avec soin", "le matin", "l'année dernière",
                "pour la première fois", "pendant la tempête"],
    },
    "es": {
        "det": ["el", "la", "un", "una", "cada", "nuestro", "su"],
        "noun": ["consejo", "río", "maestro", "jardín", "mercado", "biblioteca", "ingeniero", "pueblo", "museo",
                 "puente", "estudiante", "puerto", "granjero", "hospital", "orquesta", "empresa", "isla",
                 "bosque", "informe", "estación", "festival", "cocina", "pintor", "escuela", "invierno", "viaje"],
        "verb": ["visitó", "describió", "reparó", "abrió", "construyó", "elogió", "estudió", "descubrió",
                 "fotografió", "recibió", "planeó", "midió", "pintó", "limpió", "explicó", "protegió"],
        "adj": ["antiguo", "tranquilo", "famoso", "estrecho", "luminoso", "moderno", "pequeño", "verde",
                "notable", "cuidadoso", "generoso", "curioso", "local", "paciente"],
        "link": ["y", "mientras", "porque", "aunque", "después de que", "pero", "pues"],
        "adv": ["ayer", "lentamente", "juntos", "otra vez", "con cuidado", "por la mañana", "el año pasado",
                "por primera vez", "durante la tormenta"],
    },
}  # fmt: skip


def sentence(rng: random.Random, language: str = "en") -> str:
    """One grammatical-looking sentence in `language`, ending with a full stop."""
    v = VOCABULARY[language]

    def phrase() -> str:
        return f"{rng.choice(v['det'])} {rng.choice(v['adj'])} {rng.choice(v['noun'])}"

    words = f"{phrase()} {rng.choice(v['verb'])} {phrase()} {rng.choice(v['adv'])}"
    if rng.random() < 0.6:
        words += f" {rng.choice(v['link'])} {phrase()} {rng.choice(v['verb'])} {phrase()}"
    return words[0].upper() + words[1:] + "."


def prose(
    seed: int, language: str = "en", paragraphs: int = 4, sentences_per_paragraph: int = 5
) -> list[str]:
    """Paragraphs of sentences; about 25 words per sentence in English."""
    rng = random.Random(f"{language}-{seed}")
    return [
        " ".join(sentence(rng, language) for _ in range(sentences_per_paragraph)) for _ in range(paragraphs)
    ]


@dataclass
class Page:
    """A fetched URL: its HTML and, for tests, what it is (article, spam, ...)."""

    url: str
    html: str
    kind: str = "article"
    content_type: str = "text/html; charset=utf-8"
    body: bytes | None = None  # raw payload instead of html (images...)


NAV = ('<header><nav class="menu"><a href="/">Home</a> <a href="/news">News</a> <a href="/sport">Sport</a> '
       '<a href="/weather">Weather</a> <a href="/login">Sign in</a></nav></header>'
       '<div class="cookie-banner">We use cookies to improve your experience. Accept all cookies</div>')  # fmt: skip
SIDEBAR = ('<aside><h3>Most read</h3><ul><li><a href="/a">Ten things to do this weekend</a></li>'
           '<li><a href="/b">Weather warning for the coast</a></li><li><a href="/c">Local team wins again</a></li>'
           "</ul></aside>")  # fmt: skip
FOOTER = ('<footer><p>Copyright 2026 Example Media. All rights reserved.</p><p><a href="/privacy">Privacy policy</a>'
          ' | <a href="/terms">Terms of use</a> | <a href="/contact">Contact</a></p></footer>')  # fmt: skip


def html_page(title: str, paragraphs: list[str], language: str = "en") -> str:
    body = "".join(f"<p>{escape(p)}</p>" for p in paragraphs)
    return (f'<!DOCTYPE html><html lang="{language}"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f"</head><body>{NAV}<main><article><h1>{escape(title)}</h1>{body}</article></main>{SIDEBAR}{FOOTER}"
            "</body></html>")  # fmt: skip


def article(url: str, seed: int, language: str = "en", paragraphs: int = 4, extra: str | None = None) -> Page:
    """A news-like article page; `extra` adds one more paragraph (PII, a planted benchmark question...)."""
    text = prose(seed, language, paragraphs)
    if extra:
        text.insert(1, extra)
    return Page(url, html_page(f"Report {seed}", text, language), kind=f"article-{language}")


def page_from_text(url: str, paragraphs: list[str], kind: str = "article") -> Page:
    return Page(url, html_page("Report", paragraphs), kind=kind)


def spam_page(url: str) -> Page:
    """Keyword stuffing: the same lines again and again."""
    lines = ["Buy cheap watches now at the best price.", "Click here for free shipping today.",
             "Best price best price best price guaranteed."] * 30  # fmt: skip
    return Page(url, html_page("Cheap watches", lines), kind="spam")


def short_page(url: str) -> Page:
    return Page(url, html_page("Sign in", ["Please sign in to continue reading this page."]), kind="short")


def code_page(url: str, seed: int) -> Page:
    """An article with a code sample: C4's curly-bracket rule drops it."""
    text = prose(seed, "en")
    text.insert(
        2, "function update(state) { return state.count + 1; } is the handler we call on every click."
    )
    return Page(url, html_page(f"Snippet {seed}", text), kind="code")


def list_page(url: str, seed: int) -> Page:
    """A page of one short sentence per line: FineWeb's short-line rule drops it (Gopher and C4 keep it)."""
    rng = random.Random(f"list-{seed}")
    v = VOCABULARY["en"]
    lines = sorted({f"{rng.choice(v['det']).capitalize()} {rng.choice(v['adj'])} {rng.choice(v['noun'])} "
                    f"{rng.choice(v['verb'])}." for _ in range(60)})  # fmt: skip
    lines += ["The list is updated every week and the items are sorted by name."]
    return Page(url, html_page(f"List {seed}", lines), kind="list")


def image(url: str) -> Page:
    """A crawled PNG: not HTML, so the WARC reader skips it."""
    png = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(range(64))
    return Page(url, "", kind="image", content_type="image/png", body=png)


def near_duplicate(text: str, edits: float, seed: int = 0) -> str:
    """`text` with a share `edits` of its words replaced by other words (same length, same layout)."""
    rng = random.Random(seed)
    words = text.split(" ")
    for index in rng.sample(range(len(words)), max(1, round(len(words) * edits))):
        words[index] = rng.choice(["lantern", "copper", "meadow", "violet", "harvest", "pebble", "thunder"])
    return " ".join(words)


# crawl-filter settings for city_crawl_pages: spam-domain.com blocked, English and German kept
CITY_FILTER_SETTINGS = """\
url_filter:
  bundled_lists: false   # the 4.5M-domain list costs 10 s per worker; tested on its own
  extra_domains: [spam-domain.com]
language:
  languages: [en, de]
"""


def city_crawl_pages(number: int) -> list[Page]:
    """Crawl file `number` of the data-stage tests: 4 articles, spam, a blocked domain (spam-domain.com); file 1
    also holds a page mirrored from file 0, a near-copy of it and a German article."""
    pages = [article(f"https://www.citynews.com/{number}/{i}", seed=10 * number + i) for i in range(4)]
    pages += [
        spam_page(f"https://cheap-watches.com/{number}"),
        article(f"https://www.spam-domain.com/{number}", 1),
    ]
    if number == 1:
        original = "\n\n".join(prose(0))
        pages += [
            article("https://mirror.citynews.net/0/0", seed=0),
            page_from_text("https://copy.citynews.org/0/0", near_duplicate(original, 0.01).split("\n\n")),
            article("https://www.stadtzeitung.de/1", seed=3, language="de"),
        ]
    return pages


def _fixed_headers(url: str, record_type: str) -> dict[str, str]:
    """Record ids and dates derived from the URL, so the same pages always give the same bytes."""
    record_id = uuid.uuid5(uuid.NAMESPACE_URL, f"{record_type}:{url}")
    return {"WARC-Record-ID": f"<urn:uuid:{record_id}>", "WARC-Date": "2026-01-01T00:00:00Z"}


def write_warc(path: Path, pages: list[Page], gzip: bool = True, with_requests: bool = True) -> Path:
    """A WARC file as crawlers write it: warcinfo first, then a request and a response record per page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        writer = WARCWriter(handle, gzip=gzip)
        info = writer.create_warcinfo_record(path.name, {"software": "llmforge tests"})
        info.rec_headers.replace_header(
            "WARC-Record-ID", _fixed_headers(path.name, "warcinfo")["WARC-Record-ID"]
        )
        info.rec_headers.replace_header("WARC-Date", "2026-01-01T00:00:00Z")
        writer.write_record(info)
        for page in pages:
            if with_requests:
                request = StatusAndHeaders(
                    "GET / HTTP/1.1", [("Host", page.url.split("/")[2])], is_http_request=True
                )
                writer.write_record(writer.create_warc_record(page.url, "request", http_headers=request,
                                                              warc_headers_dict=_fixed_headers(page.url, "request")))  # fmt: skip
            headers = StatusAndHeaders("200 OK", [("Content-Type", page.content_type)], protocol="HTTP/1.1")
            payload = io.BytesIO(page.body if page.body is not None else page.html.encode("utf-8"))
            writer.write_record(writer.create_warc_record(page.url, "response", payload=payload, http_headers=headers,
                                                          warc_headers_dict=_fixed_headers(page.url, "response")))  # fmt: skip
    return path
