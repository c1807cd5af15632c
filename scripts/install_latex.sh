#!/usr/bin/env bash
# Install the LaTeX compiler that tests/reports/test_family_tables.py uses to compile reports' tables.tex
# (Debian's texlive-latex-base + texlive-latex-recommended: booktabs, graphicx). Best effort: where this
# is not root or has no apt-get, it says so and exits 0, and that test skips naming the reason.
set -uo pipefail
PACKAGES=(texlive-latex-base texlive-latex-recommended)
command -v pdflatex >/dev/null 2>&1 && exit 0
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install_latex: not root or no apt-get; the LaTeX compile test will skip" >&2
  exit 0
fi
t0=$(date +%s)
if DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
   && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null 2>&1; then
  echo "install_latex: installed ${PACKAGES[*]} in $(( $(date +%s) - t0 )) s"
else
  echo "install_latex: apt-get could not install ${PACKAGES[*]}; the LaTeX compile test will skip" >&2
fi
exit 0
