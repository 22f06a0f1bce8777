#!/usr/bin/env bash
# The demo: drives a running server with the stock AWS CLI v2 and our service model.
# Builds an image from examples/hello on the busybox base, runs a MicroVM from it,
# calls it through its endpoint with a token, and terminates it.
#   bash scripts/demo.sh [http://127.0.0.1:9600]
set -euo pipefail
cd "$(dirname "$0")/.."
endpoint="${1:-http://127.0.0.1:9600}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" AWS_PAGER=""
aws=/usr/bin/aws
$aws configure add-model --service-model "file://$PWD/model/lambda-microvms-2025-09-09.json" --service-name lambda-microvms
microvms() { echo "\$ aws lambda-microvms $*" >&2; $aws --endpoint-url "$endpoint" lambda-microvms "$@"; }

# Polls `get-...` until the field reaches one of the states (builds and boots take seconds).
wait_for() {
  local what=$1 query=$2 states=$3; shift 3
  local state
  for _ in $(seq 1 600); do
    state=$($aws --endpoint-url "$endpoint" lambda-microvms "$@" --query "$query" --output text)
    case " $states " in *" $state "*) echo "$what: $state" >&2; echo "$state"; return ;; esac
    sleep 0.5
  done
  echo "$what: still $state" >&2
  return 1
}

name="hello-$(date +%s)"
microvms list-managed-microvm-images --query 'items[].imageArn'
microvms create-microvm-image --name "$name" \
  --base-image-arn "arn:aws:lambda:$AWS_DEFAULT_REGION:aws:microvm-image:busybox" \
  --build-role-arn "arn:aws:iam::000000000000:role/demo" \
  --code-artifact "uri=file://$PWD/examples/hello" \
  --environment-variables "GREETING=Hello from a MicroVM" --tags project=demo \
  --query '{name: name, state: state, imageVersion: imageVersion}'
[ "$(wait_for "image version 1" state "SUCCESSFUL FAILED" get-microvm-image-version --image-identifier "$name" --image-version 1)" = SUCCESSFUL ]
microvms get-microvm-image --image-identifier "$name"

microvm=$(microvms run-microvm --image-identifier "$name" --query microvmId --output text)
[ "$(wait_for "MicroVM $microvm" state "RUNNING TERMINATED" get-microvm --microvm-identifier "$microvm")" = RUNNING ]
url=$(microvms get-microvm --microvm-identifier "$microvm" --query endpoint --output text)
token=$(microvms create-microvm-auth-token --microvm-identifier "$microvm" --allowed-ports port=8080 \
  --expiration-in-minutes 15 --query 'authToken."X-aws-proxy-auth"' --output text)

# *.localhost names reach loopback; the endpoint's certificate comes from the server's own CA.
ca=$(mktemp)
node dist/src/cli/main.js ca > "$ca" 2>/dev/null
echo "\$ curl --cacert CA -H 'X-aws-proxy-auth: ...' $url/cgi-bin/index.cgi" >&2
curl -sS --fail-with-body --cacert "$ca" -H "X-aws-proxy-auth: $token" "$url/cgi-bin/index.cgi"
echo "\$ curl $url/ (no token)" >&2
curl -sS --cacert "$ca" "$url/" -w ' -> HTTP %{http_code}\n' || true
rm -f "$ca"

microvms terminate-microvm --microvm-identifier "$microvm"
wait_for "MicroVM $microvm" state "TERMINATED" get-microvm --microvm-identifier "$microvm" > /dev/null
microvms get-microvm --microvm-identifier "$microvm" --query '{state: state, terminatedAt: terminatedAt}'
