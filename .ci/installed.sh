#!/usr/bin/env bash
# What `pip install .` gives a user: the wheel and the sdist are built from this checkout, the wheel
# is installed with its extras into a fresh venv, and every subcommand is run against the installed
# package from a folder outside the checkout. Usage: .ci/installed.sh [WORK_DIR]
set -euo pipefail
src=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
cd "$work"
t0=$SECONDS

# Build from the committed tree's files only, so nothing the checkout has lying around (build/, an
# egg-info) can stand in for a file the wheel lacks.
mkdir tree
(cd "$src" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar -cf - --) | tar -xf - -C tree
for hook in build_wheel build_sdist; do  # one process each: setuptools keeps state between them
  (cd tree && "$src/.venv/bin/python" -c "
import sys
from setuptools import build_meta as b
print('built', b.$hook(sys.argv[1]))" "$work/dist") >build.log 2>&1 || { cat build.log; exit 1; }
done
wheel=$(ls dist/alexnet-*.whl)
echo "built $(cd dist && echo *): $(python3 -c "import sys, zipfile; print(sum(n.startswith('alexnet/') for n in zipfile.ZipFile(sys.argv[1]).namelist()))" "$wheel") files of alexnet/ in the wheel," \
  "$(cd tree && find alexnet -type f | wc -l) in the tree"

python3 -m venv venv
# The CPU build of torch, as setup.sh installs it (a local wheel here, PyTorch's CPU index elsewhere).
venv/bin/pip install -q torch==2.13.0 2>/dev/null \
  || venv/bin/pip install -q torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
venv/bin/pip install -q "$wheel[serve,export]" 2>&1 | grep -v '^WARNING: Location' || true
echo "installed: $(venv/bin/alexnet --version) in $((SECONDS - t0)) s"

mkdir user && cd user  # outside the checkout: only the installed package can be imported here
a=../venv/bin/alexnet
py=../venv/bin/python
$py -c "
import alexnet, sys
where = alexnet.__file__
assert where.startswith(sys.prefix), f'alexnet imported from {where}, not the venv {sys.prefix}'
from alexnet import d2l  # the book's facade imports from the installed package
print('imported from', where)"
for c in $($py -c "
from alexnet.cli import build_parser
sub = next(a for a in build_parser()._actions if a.dest == 'command')
print(' '.join(sub.choices))"); do
  $a "$c" --help >/dev/null || { echo "alexnet $c --help failed"; exit 1; }
done
echo "every subcommand's --help answers"

$a models >/dev/null
$a train --preset cpu --epochs 1 --limit-train 512 --limit-test 256 --run-dir run --no-progress | tail -1
$a evaluate run | tail -1
$py -c "
from PIL import Image
Image.new('L', (28, 28), 200).save('shirt.png')"
$a predict run shirt.png | tail -1
$a report run --out rep | tail -1
test -s rep/report.html
$a export run --format onnx -o run.onnx | tail -1
$a predict run.onnx shirt.png | tail -1

port=$($py -c "
import socket
s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
$a serve --runs . --port "$port" >serve.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
# Handshake: the server's first answer, polled for at most 60 s.
$py - "$port" <<'PY'
import json, sys, time, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(600):
    try:
        runs = json.load(urllib.request.urlopen(base + "/api/runs", timeout=5))
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("alexnet serve did not answer /api/runs in 60 s")
page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
names = [r["name"] for r in runs["runs"]] if isinstance(runs, dict) else [r["name"] for r in runs]
assert "run" in names, runs
assert "<html" in page.lower(), page[:200]
print(f"serve answered /api/runs ({len(names)} run) and /")
PY
echo "installed-package smoke test passed in $((SECONDS - t0)) s"
