#!/usr/bin/env bash
# Pack batchscore's dependencies for Spark executors (README: "Spark clusters: spark-submit").
#
#   deploy/spark/pack-env.sh OUTPUT.tar.gz [PYTHON]
#
# Makes a venv with batchscore's runtime dependencies (no dev, test, bench or spark
# extras: the cluster provides pyspark), takes out what executors never load, and packs
# it with venv-pack as .tar.gz (the format whose file permissions Spark keeps), to ship
# with `spark-submit --archives OUTPUT.tar.gz#environment`. batchscore's own code is not
# inside: it goes with --py-files, so a code release does not repack this.
# PYTHON (default python3.11) must be the same base interpreter, at the same path, as
# on every node of the cluster.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
    echo "usage: $0 OUTPUT.tar.gz [PYTHON]" >&2
    exit 2
fi
output=$(realpath -m "$1")
python=${2:-python3.11}
project=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
work=$(mktemp -d "${TMPDIR:-/tmp}/batchscore-pack.XXXXXX")
trap 'rm -rf "$work"' EXIT
venv=$work/environment

# --copies: a venv whose bin/python links to the base interpreter is refused by Spark.
"$python" -m venv --copies "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
# batchscore's runtime dependencies, read from pyproject.toml: batchscore itself is not
# built (nothing is written into the checkout: no build/, no egg-info).
"$venv/bin/python" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$project/pyproject.toml" > "$work/requirements.txt"
"$venv/bin/python" -m pip install --quiet -r "$work/requirements.txt" venv-pack

# What executors never load (about 0.9 GB of 3 GB unpacked): Apache Beam and the Google
# Cloud clients only Beam's [gcp] extra uses (google-cloud-storage stays: gs:// outputs),
# TensorFlow's C++ headers, libclang (TensorFlow's code generators), and test suites.
"$venv/bin/python" -m pip uninstall --quiet -y \
    apache-beam libclang google-cloud-aiplatform google-genai google-cloud-bigquery \
    google-cloud-bigquery-storage google-cloud-bigtable google-cloud-build \
    google-cloud-dataflow-client google-cloud-datastore google-cloud-dlp google-cloud-kms \
    google-cloud-language google-cloud-monitoring google-cloud-pubsub \
    google-cloud-recommendations-ai google-cloud-resource-manager \
    google-cloud-secret-manager google-cloud-spanner google-cloud-sql \
    google-cloud-videointelligence google-cloud-vision 2>/dev/null || true
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
rm -rf "$site/tensorflow/include"
find "$site" -depth -type d -name tests -path '*/site-packages/*/tests' -exec rm -rf {} +

mkdir -p "$(dirname "$output")"
"$venv/bin/venv-pack" --prefix "$venv" --output "$output.partial" --format tar.gz \
    --compress-level 1 --force --quiet
mv "$output.partial" "$output"
du -h "$output" | cut -f1 | xargs -I{} echo "packed $output ({} compressed; $(du -sh "$venv" | cut -f1) unpacked on each executor)"
