"""PII detection: precision and recall on a labelled set of technical and personal text, and the redaction
policies.

Each example is text as it appears in documentation, code, mail headers and package-manager commands, with its
true PII marked `⟦kind:value⟧`; everything unmarked must stay. The set has what datatrove's patterns mistook for
addresses (package versions, git remotes, matrix products, OIDs, versions) and for phones (number lists, CVE ids,
build numbers, coordinates). Before the checks (datatrove's patterns and the old phone rule) the whole set scored
precision 0.536, recall 0.952; the test pins what the checks give now and compares with datatrove's own formatter.
"""

import re
from collections import Counter

import pytest
from datatrove.data import Document
from datatrove.pipeline.formatters.pii import PIIFormatter

from llmforge.data import pii

# fmt: off
LABELLED = [
    # --- mail headers, signatures, commit trailers, package metadata: real addresses
    "From: Jan Novak <⟦email:jan.novak@seznam.cz⟧>\nTo: ⟦email:dev-team@lists.acme-corp.com⟧\nSubject: nightly build failing",
    'Cc: "O\'Neil, Pat" <⟦email:pat.oneil@bigcompany.com⟧>\nDate: Tue, 4 Mar 2025 10:12:01 +0100',
    "Reply-To: ⟦email:support@shop-online.store⟧",
    "Message-ID: <CAF7x9QzK1yZ@mail.gmail.com>\nIn-Reply-To: <20250304.101201@lists.debian.org>",
    "Signed-off-by: Wei Zhang <⟦email:wei.zhang@huawei.com⟧>\nReviewed-by: Sam Lee <⟦email:sam+lkml@fastmail.fm⟧>",
    "Co-authored-by: Ana Silva <⟦email:12345678+anasilva@users.noreply.github.com⟧>",
    "commit 3f2a9c1\nAuthor: Lena Fischer <⟦email:lena.fischer@posteo.de⟧>\nDate:   Tue Mar 4 10:12:01 2025 +0100",
    'authors = [{ name = "Priya Raman", email = "⟦email:priya.raman@gmail.com⟧" }]',
    '"author": "Tom Baker <⟦email:tom@bakerlabs.io⟧>",\n"license": "MIT"',
    "Maintainer: Debian Python Team <⟦email:team+python@tracker.debian.org⟧>",
    'git config --global user.email "⟦email:ravi.k@infosys.com⟧"',
    "--\nDr. Aiko Tanaka\nGraduate School of Information Science\n⟦email:aiko.tanaka@u-tokyo.ac.jp⟧\n⟦phone:+81 3 5841 1234⟧",
    "Questions? Write to ⟦email:maria.gonzalez@outlook.com⟧ and we will answer within a day.",
    "CONTACT: ⟦email:JOHN.SMITH@AOL.COM⟧",
    "You can email me at ⟦email:d.kowalski@wp.pl⟧ or find me at the conference.",
    "Send your CV to ⟦email:jobs@startup.ai⟧ before Friday.",
    'Write to <a href="mailto:⟦email:info@stadtwerke-bonn.de⟧">our office</a>.',
    "[⟦email:jane_doe@protonmail.ch⟧](mailto:⟦email:jane_doe@protonmail.ch⟧)",
    "id,name,email\n17,Olu Adebayo,⟦email:olu.adebayo@yahoo.co.uk⟧",
    'send_mail("Welcome", body, "⟦email:noreply@myapp.com⟧", ["⟦email:alice.w@gmail.com⟧"])',
    "Press: ⟦email:presse@zeit.de⟧ | Tel. ⟦phone:+49 40 3280 0⟧",
    "Reach me at ⟦email:mike [at] fastmail [dot] net⟧ if the form does not work.",  # obfuscated: a known miss
    "Bug reports go to ⟦email:bugs@python.org⟧ (see the developer guide).",
    # --- package managers and version specifiers: not addresses
    "cargo add rand@0.8.5",
    "npm install --save-dev @types/node@18.11.9",
    "pnpm add react@18.2.0 react-dom@18.2.0",
    "go install golang.org/x/tools/gopls@v0.14.2",
    "brew install python@3.11 && brew link python@3.11",
    "spack install hdf5@1.14.3 +mpi ^openmpi@4.1.6",
    "pip install 'mypkg @ git+https://github.com/org/mypkg.git@v1.2.0'",
    "pip install httpx@git+https://github.com/encode/httpx",
    "npx create-react-app@5.0.1 my-app",
    "npm i -g @vue/cli@5.0.8",
    '"node_modules/@babel/core@7.23.2": {"integrity": "sha512-n7s51"}',
    "yarn add lodash@^4.17.21",
    "docker pull ubuntu@sha256:2b7412e6465c3c7fc5bb21d3e6f1917c167358449fecac8176c6e496e5c1f05f",
    "julia> ]add Example@0.5.3",
    # --- git remotes and URLs with a user part
    "git clone git@github.com:pytorch/pytorch.git",
    "git remote add origin git@gitlab.com:acme/infra.git",
    "Test the key with: ssh -T git@github.com",
    "git clone ssh://git@bitbucket.org/team/repo.git",
    'source = "git::ssh://git@github.com/org/modules.git//vpc?ref=v1.2.0"',
    "git clone https://oauth2@gitlab.freedesktop.org/mesa/mesa.git",
    "DATABASE_URL=postgresql://app:s3cret@db.prod-eu.acme.com:5432/app",
    "ssh pi@raspberrypi.local or ssh admin@nas.lan, or connect to user@localhost:2222",
    "scp build.tar.gz deploy@ci-runner.internal:/srv/releases/",
    # --- decorators and annotations
    '@property\ndef name(self):\n    return self._name\n\n@app.route("/users/<int:user_id>")\ndef user(user_id): ...',
    "@pytest.mark.parametrize(\"n\", [1, 2])\n@dataclass(frozen=True)\nclass Point: ...",
    "@Override\npublic String toString() { return name; }",
    "@Component({selector: 'app-root', templateUrl: './app.component.html'})",
    # --- Python matrix products
    "scores = q@k.transpose(-2, -1) / math.sqrt(d)",
    "y = x@self.weight.T + self.bias",
    "out = A@B.mT  # batched",
    "z = w@x.to(device)",
    "logits = hidden@embed.weight.t()",
    # --- phones: true
    "Call us on ⟦phone:+1 415 555 0132⟧ between 9 and 5.",
    "Tel: ⟦phone:030 1234 5678⟧, Fax: ⟦phone:030 1234 5679⟧",
    "London office: ⟦phone:+44 20 7946 0958⟧",
    "Phone: ⟦phone:(212) 555-0187⟧",
    "WhatsApp ⟦phone:+91 98765 43210⟧ for bookings",
    "Paris: ⟦phone:+33 1 42 68 53 00⟧",
    "Jenny: ⟦phone:555-867-5309⟧",
    "Tokyo office ⟦phone:03-5841-1234⟧",
    "Mobile ⟦phone:0171 2345678⟧",
    # --- numbers that are not phones
    "Fixed in CVE-2021-44228 and CVE-2024-3094.",
    "kill -9 4821 4822 4823",
    "--hidden-sizes 512 1024 2048 4096",
    "Windows 11 build 10.0.22631.2861",
    "ISBN 978-0-596-52068-7",
    "between 2019 2020 2021 and 2022",
    "Location: 52.5200 13.4050 (Berlin)",
    "timestamp 1700000000 offset 3600",
    "at 12:30:45 on 2023-10-12 or 12.10.2023",
    # --- IP addresses: true
    "Failed password for root from ⟦ip:81.2.69.160⟧ port 52114 ssh2",
    '⟦ip:185.199.108.153⟧ - - [10/Oct/2023:13:55:36 +0000] "GET / HTTP/1.1" 200 2326',
    "client ⟦ip:2a00:1450:4001:81b::200e⟧ connected",
    "X-Forwarded-For: ⟦ip:98.137.11.163⟧",
    # --- dotted numbers that are not addresses
    "OID 1.3.6.1.4.1.311.21.8 and 2.5.4.3 (commonName)",
    '[assembly: AssemblyVersion("4.8.0.0")]',
    "Upgrade to version 1.2.3.4 of the driver.",
    "lan 192.168.1.20, 10.0.0.1, fe80::1 and ::1",
    "MAC 00:1A:2B:3C:4D:5E",
    "std::vector<int> v; v.push_back(1);",
    # --- payment cards and SSNs
    "Card: ⟦credit_card:4111 1111 1111 1111⟧ exp 12/27",
    "Pay with ⟦credit_card:5500-0000-0000-0004⟧",
    "order 4111 1111 1111 1112 was refused",
    "SSN: ⟦ssn:536-22-8145⟧",
    "Social Security number ⟦ssn:219-09-9999⟧ on file",
    "invalid SSNs 000-12-3456 and 666-12-3456",
    # --- written after the rules, not tuned on
    "Contact: <⟦email:jose.garcia@universidad.es⟧>",
    "email: ⟦email:m.rossi@libero.it⟧, phone: ⟦phone:+39 06 1234 5678⟧",
    '<span class="email">⟦email:hello@studio-nord.design⟧</span>',
    "Thanks to ⟦email:anna.k@mit.edu⟧ for the patch.",
    'From: "Kim, Min-jun" <⟦email:minjun.kim@naver.com⟧>',
    "Bookings: ⟦email:booking@hotel-alpina.travel⟧",
    'EMAIL_HOST_USER = "⟦email:ops.alerts@fintech-co.com⟧"',
    "@media (max-width: 600px) { .nav { display: none; } }",
    '<img src="logo@2x.png" srcset="logo@3x.jpg 3x">',
    "pip install git+ssh://git@github.com/org/pkg.git@main",
    "npm install lodash@4.17.21 express@4.18.2",
    'renv::install("dplyr@1.1.4")',
    "Hotline: ⟦phone:0800 123 4567⟧",
    "Call ⟦phone:(03) 9123 4567⟧ in Melbourne",
    "Beijing: ⟦phone:+86 138 0013 8000⟧ or ⟦phone:138 0013 8000⟧",
    "Toll free ⟦phone:+1-800-555-0199⟧",
    "Moscow ⟦phone:+7 495 123-45-67⟧",
    "resolution 1920 1080 or 2560 1440",
    "ephemeral ports 49152-65535",
    "seeds 42 1234 31415 27182",
    "Connection from ⟦ip:45.33.32.156⟧ refused",
    "resolver ⟦ip:2001:4860:4860::8888⟧",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/120.0.6099.109 Safari/537.36",
    "sha256WithRSAEncryption (1.2.840.113549.1.1.11)",
]
# fmt: on

MARK = re.compile(r"⟦(\w+):(.*?)⟧", re.S)


def parse(example: str) -> tuple[str, Counter]:
    """The plain text, and its true PII as a multiset of (kind, text)."""
    return MARK.sub(lambda m: m.group(2), example), Counter(MARK.findall(example))


def scores(find) -> dict[str, dict[str, float]]:
    """Precision and recall per kind and over all kinds ("all"), matching (kind, text) exactly."""
    counts: dict[str, Counter] = {}
    for example in LABELLED:
        text, truth = parse(example)
        found = Counter(find(text))
        for outcome, matches in (("tp", found & truth), ("fp", found - truth), ("fn", truth - found)):
            for (kind, _), number in matches.items():
                for key in (kind, "all"):
                    counts.setdefault(key, Counter())[outcome] += number
    return {kind: {"precision": c["tp"] / max(1, c["tp"] + c["fp"]), "recall": c["tp"] / max(1, c["tp"] + c["fn"]),
                   **c} for kind, c in counts.items()}  # fmt: skip


def datatrove_find(text: str) -> list[tuple[str, str]]:
    """What datatrove's PIIFormatter replaces (its patterns and validators, run the way its replacers run)."""
    formatter, found = PIIFormatter(), []
    for kind, replacer in (("email", formatter.emails_replacer), ("ip", formatter.ip_replacer)):

        def keep(match: re.Match, kind=kind, replacer=replacer) -> str:
            if replacer.validator is None or replacer.validator(match.group(0)):
                found.append((kind, match.group(0)))
            return "<PII>"

        text = replacer.regex.sub(keep, text)
    return found


def test_labelled_set_is_large_and_mixed():
    truths = [parse(example)[1] for example in LABELLED]
    assert len(LABELLED) >= 100
    assert sum(not truth for truth in truths) >= 50  # examples where nothing may be redacted
    assert {kind for truth in truths for kind, _ in truth} == set(pii.PII_KINDS)


def test_precision_and_recall_on_the_labelled_set():
    ours = scores(pii.PIIScanner(list(pii.PII_KINDS)).find)
    # measured: all kinds 60 found, 1 wrong (the OID 2.5.4.3, shaped like an address), 2 missed (an obfuscated
    # address, a Chinese mobile number without prefix)
    assert ours["all"]["precision"] >= 0.98 and ours["all"]["recall"] >= 0.96, ours["all"]
    assert ours["email"]["precision"] == 1.0 and ours["email"]["recall"] >= 0.96, ours["email"]
    assert ours["phone"]["precision"] == 1.0 and ours["phone"]["recall"] >= 0.94, ours["phone"]
    assert ours["ip"]["recall"] == ours["ssn"]["recall"] == ours["credit_card"]["recall"] == 1.0

    # datatrove's own formatter on the kinds it covers: as complete, far less precise (0.46 on emails)
    theirs = scores(datatrove_find)
    for kind in ("email", "ip"):
        assert ours[kind]["recall"] >= theirs[kind]["recall"]
        assert ours[kind]["precision"] > theirs[kind]["precision"] + 0.25, (kind, ours[kind], theirs[kind])


def test_top_level_domains_come_from_the_bundled_public_suffix_list():
    tlds = pii.top_level_domains()
    assert {"com", "org", "uk", "de", "io", "ai", "museum", "xn--p1ai", "рф"} <= tlds
    assert not {"local", "lan", "internal", "localhost", "example", "test", "5", "transpose", "t"} & tlds


@pytest.mark.parametrize(
    "text, redacted",
    [
        ("mail jane.doe@mail-example.org now", "mail <EMAIL> now"),
        ("call +1 (555) 123-4567.", "call <PHONE_NUMBER>."),
        ("call 555-123-4567 or 030 1234 5678 or +49 30 12345678", "call <PHONE_NUMBER> or <PHONE_NUMBER> or <PHONE_NUMBER>"),
        ("card 4111 1111 1111 1111 and 5500-0000-0000-0004", "card <CREDIT_CARD> and <CREDIT_CARD>"),
        ("host 8.8.8.8 and 2a00:1450:4001:81b::200e.", "host <IP_ADDRESS> and <IP_ADDRESS>."),
        ("ssn 536-22-8145", "ssn <SSN>"),
        ("cargo add rand@0.8.5 and git clone git@github.com:org/repo.git", None),
        # not PII: failed Luhn check, private addresses, times, dates, years, plain numbers, version strings
        ("card 4111 1111 1111 1112", None),
        ("lan 192.168.1.20, 10.0.0.1, fe80::1 and ::1", None),
        ("at 12:30:45 on 2023-10-12 or 12.10.2023", None),
        ("from 1990 2000 2010 to 100 200 300", None),
        ("version 3.11.7 costs 1,234,567 dollars", None),
    ],
)  # fmt: skip
def test_pii_patterns(text, redacted):
    scanner = pii.PIIScanner(list(pii.PII_KINDS))
    assert scanner.redact(text)[0] == (redacted or text)


def doc(text: str) -> Document:
    return Document(text=text, id="x")


def test_pii_counts_and_policies():
    scanner = pii.PIIScanner(["email", "phone"])
    text = "a@b-mail.com, c@d-mail.com, +1 555 123 4567 and 8.8.8.8"
    assert scanner.redact(text) == ("<EMAIL>, <EMAIL>, <PHONE_NUMBER> and 8.8.8.8", {"email": 2, "phone": 1})
    assert pii.PIIScanner(["ip"], public_ips_only=False).redact("lan 192.168.1.20")[0] == "lan <IP_ADDRESS>"
    assert pii.luhn_valid("79927398713") and not pii.luhn_valid("79927398710")
    assert pii.PIIFilter(["email"]).filter(doc("x@y-mail.com")) == (False, "contains_email")
    assert pii.PIIFilter(["email"]).filter(doc("no address here")) is True
    with pytest.raises(ValueError, match="unknown PII kinds"):
        pii.PIIScanner(["passport"])


def test_ssn_is_opt_in():
    from llmforge.stages.crawl_filter import PIISettings

    text = "SSN 536-22-8145"
    assert "ssn" not in PIISettings().kinds and set(PIISettings().kinds) == set(pii.DEFAULT_PII_KINDS)
    assert pii.PIIScanner(PIISettings().kinds).redact(text)[0] == text  # nor read as a phone number
    opted = PIISettings.model_validate({"kinds": [*pii.DEFAULT_PII_KINDS, "ssn"]})
    assert pii.PIIScanner(opted.kinds).redact(text) == ("SSN <SSN>", {"ssn": 1})
    # numbers the SSA never issues
    assert pii.PIIScanner(["ssn"]).find("000-12-3456 666-12-3456 912-34-5678 123-00-4567 123-45-0000") == []
