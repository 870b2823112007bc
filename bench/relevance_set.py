"""An evaluation set for search relevance over real text nobody here wrote: Debian package
descriptions.

The texts are not in the repository: they are read at run time from the apt lists of the
machine (``apt-cache dumpavail``; on a fresh Debian 12 "bookworm" machine of this kind run
``sudo apt-get update`` first, which ``make run`` does anyway when it installs PostgreSQL).
Only the questions, their judged answers (package names) and the rule that picks the other
packages are kept here, so the corpus is the same on every bookworm machine:

* every package named below (the judged answers and a few near misses: ``cron`` next to
  ``at``, ``cowsay`` next to ``figlet``), then
* packages tagged ``role::program`` in debtags, ordered by the SHA-256 of their name, until
  the corpus has ``size`` packages (1,500 at full size, 200 at smoke size).

Each package becomes one row: ``package`` (name), ``description`` (apt's one-line
description, the embedded text column), ``section`` and ``tags`` (debtags, as apt prints
them). apt on these images downloads no ``Translation-en`` (``docker-no-languages``), so the
long descriptions are not there; the short ones and the tags are what a user sees in
``apt search``.

The questions are paraphrases, written without looking at the descriptions' wording where
that was possible (they say "keep a shell session running after I disconnect", not
"terminal multiplexer"). Grades: 2 = what one would recommend, 1 = a fair answer.
"""

from __future__ import annotations

import hashlib
import subprocess
from dataclasses import dataclass

#: (question, {package: grade})
QUERIES: list[tuple[str, dict[str, int]]] = [
    ("keep a shell session running after I disconnect",
     {"tmux": 2, "screen": 2, "byobu": 1, "dtach": 1}),
    ("see which processes are using the most CPU and memory",
     {"htop": 2, "btop": 2, "atop": 1, "glances": 1, "procps": 1}),
    ("save an entire website so I can browse it without internet",
     {"httrack": 2, "webhttrack": 2, "wget": 1}),
    ("find files that are copies of each other and free up space",
     {"fdupes": 2, "rdfind": 2, "jdupes": 2, "duff": 2, "rmlint": 1}),
    ("what is taking up room on my hard drive",
     {"ncdu": 2, "gdu": 2, "baobab": 2, "duc": 2, "filelight": 2}),
    ("keep folders identical on two machines",
     {"unison": 2, "syncthing": 2, "rsync": 2}),
    ("turn a markdown file into a word document", {"pandoc": 2}),
    ("shrink photos and change their format from a script",
     {"imagemagick": 2, "graphicsmagick": 2}),
    ("make a recording of what I type in the console to show others",
     {"asciinema": 2, "ttyrec": 2}),
    ("stop attackers guessing my ssh password", {"fail2ban": 2, "sshguard": 2}),
    ("get warned before my https certificates run out", {"ssl-cert-check": 2}),
    ("look at the packets going over my network",
     {"wireshark": 2, "tcpdump": 2, "tshark": 2, "termshark": 2}),
    ("which ports are open on the machines in my LAN",
     {"nmap": 2, "masscan": 2, "zmap": 1}),
    ("store my logins safely, encrypted", {"pass": 2, "keepassxc": 2, "keepass2": 2}),
    ("run a command once, tomorrow at 9 am", {"at": 2}),
    ("search for a pattern in all files of a big code base quickly",
     {"ripgrep": 2, "silversearcher-ag": 2, "ack": 2}),
    ("read and write mail without a graphical interface",
     {"mutt": 2, "neomutt": 2, "alpine": 2, "aerc": 1}),
    ("convert a video to another format", {"ffmpeg": 2, "handbrake-cli": 2}),
    ("copy songs from an audio CD to my computer",
     {"abcde": 2, "asunder": 2, "sound-juicer": 2, "cdparanoia": 2}),
    ("a simple editor for the terminal for people new to linux", {"nano": 2, "micro": 2, "ne": 1}),
    ("back up my files with encryption and without storing the same data twice",
     {"borgbackup": 2, "restic": 2, "duplicity": 1}),
    ("follow several logs at once in color", {"multitail": 2, "lnav": 2, "ccze": 1}),
    ("get the text out of a pdf", {"poppler-utils": 2}),
    ("which program is hogging my network bandwidth",
     {"nethogs": 2, "iftop": 1, "bmon": 1, "nload": 1, "vnstat": 1}),
    ("make my notebook's battery last longer", {"tlp": 2, "powertop": 2}),
    ("get back files I deleted by accident", {"testdisk": 2, "extundelete": 2, "foremost": 2}),
    ("create a strong random password",
     {"pwgen": 2, "apg": 2, "makepasswd": 2, "diceware": 1, "xkcdpass": 1}),
    ("detect whether my server was compromised by malware",
     {"rkhunter": 2, "chkrootkit": 2, "lynis": 1, "clamav": 1, "aide": 1, "tripwire": 1}),
    ("show how far along a long copy through a pipe is", {"pv": 2, "progress": 2}),
    ("a to-do list I can manage in the terminal", {"taskwarrior": 2, "todotxt-cli": 2}),
]

#: Near misses kept in every corpus (same neighbourhood as some answer, never judged relevant).
NEAR_MISSES = ("procps cron anacron systemd-cron cowsay fortune-mod figlet toilet qrencode units bc qalc "
               "hledger ledger gnucash etckeeper needrestart unattended-upgrades debsecan pwgen moreutils "
               "parallel entr inotify-tools watchman jq yq miller csvkit xmlstarlet sqlite3 mc ranger nnn vifm "
               "gddrescue lyx tree bsdutils speedtest-cli iperf3 git mercurial fossil darcs").split()


@dataclass(frozen=True)
class Package:
    name: str
    description: str
    section: str
    tags: str


def _parse(dump: str) -> dict[str, Package]:
    out: dict[str, Package] = {}
    for block in dump.split("\n\n"):
        rec: dict[str, str] = {}
        last = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and last:
                rec[last] += " " + line.strip()
                continue
            k, _, v = line.partition(":")
            rec[k], last = v.strip(), k
        name = rec.get("Package")
        if name and name not in out and rec.get("Description"):
            out[name] = Package(name, rec["Description"], rec.get("Section", ""), rec.get("Tag", ""))
    return out


def available() -> dict[str, Package]:
    """Every package apt knows, by name (the first record of each: apt's candidate order)."""
    try:
        dump = subprocess.run(["apt-cache", "dumpavail"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise SystemExit(f"search-relevance needs apt's package lists (apt-cache dumpavail): {e}") from None
    pkgs = _parse(dump)
    if len(pkgs) < 5000:
        raise SystemExit(f"apt knows only {len(pkgs)} packages: run `sudo apt-get update` first")
    return pkgs


def judged() -> list[str]:
    return list(dict.fromkeys(p for _, rel in QUERIES for p in rel))


def corpus(size: int, pkgs: dict[str, Package] | None = None) -> list[Package]:
    """The judged packages, the near misses, then role::program packages by SHA-256 of their name."""
    pkgs = pkgs if pkgs is not None else available()
    fixed = list(dict.fromkeys([*judged(), *NEAR_MISSES]))
    missing = [n for n in fixed if n not in pkgs]
    if missing:
        raise SystemExit(f"apt does not know {', '.join(missing)}: the set was built on Debian 12 (bookworm)")
    rest = sorted((n for n, p in pkgs.items() if "role::program" in p.tags and n not in set(fixed)),
                  key=lambda n: hashlib.sha256(n.encode()).hexdigest())
    names = fixed + rest[:max(0, size - len(fixed))]
    return [pkgs[n] for n in names]
