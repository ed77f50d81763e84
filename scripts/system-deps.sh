#!/usr/bin/env bash
# System packages some tests need that pip cannot provide: a headless Chromium (the HTML report is opened in a
# real browser), pdflatex with booktabs (leaderboard.tex is compiled: texlive-latex-base has pdflatex and the
# article class, texlive-latex-recommended has booktabs) and Slurm with munge (the cluster profile runs against a
# real single-node Slurm, scripts/local-slurm.sh). Installs with apt-get when run as root on Debian/Ubuntu (CI
# does), without recommended packages (the smallest TeX install); otherwise says what is missing.
# The default run (`bash run.sh`) needs none of this.
set -euo pipefail
missing=()
command -v chromium >/dev/null || command -v chromium-browser >/dev/null || command -v google-chrome >/dev/null || missing+=(chromium)
command -v pdflatex >/dev/null || missing+=(texlive-latex-base)
{ command -v kpsewhich >/dev/null && kpsewhich booktabs.sty >/dev/null; } || missing+=(texlive-latex-recommended)
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "[system-deps] apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null
else
    echo "[system-deps] missing ${missing[*]} (needs root to install); the tests that need it will skip outside CI" >&2
fi
