#!/bin/sh
# Builds .devkit/: this machine's iperf3 and socat with the libraries they need (not libc),
# behind wrappers that set LD_LIBRARY_PATH for them alone, so perf/run.py can run on a machine
# that has neither (the lent many-core machine). Carry .devkit and target/release/{vsplice,
# examples/baseline-relay,examples/loadgen}, then there:
#   PATH=$PWD/.devkit/bin:$PATH python3 perf/run.py --no-build --cases scale,crr
# An older build for --vsplice-old can go in .devkit too. Add /.devkit/ to .git/info/exclude.
set -eu
cd "$(dirname "$0")/.."
mkdir -p .devkit/bin .devkit/lib
for tool in iperf3 socat; do
    bin=$(command -v "$tool") || { echo "kit: $tool is not installed here" >&2; exit 1; }
    cp "$bin" ".devkit/lib/$tool.bin"
    ldd "$bin" | awk '$3 ~ /^\// {print $3}' | grep -v -E '/lib(c|m|resolv)\.so' |
        while read -r lib; do cp -L "$lib" .devkit/lib/; done
    printf '#!/bin/sh\nd=$(dirname "$(readlink -f "$0")")/../lib\nLD_LIBRARY_PATH=$d exec "$d/%s.bin" "$@"\n' \
        "$tool" > ".devkit/bin/$tool"
    chmod +x ".devkit/bin/$tool"
done
du -sh .devkit
