#!/usr/bin/env bash
# The demo: drives a running server with the stock AWS CLI v2 and our service model.
#   bash scripts/demo.sh [http://127.0.0.1:9600]
set -euo pipefail
cd "$(dirname "$0")/.."
endpoint="${1:-http://127.0.0.1:9600}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-test}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-test}"
export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}" AWS_PAGER=""
aws=/usr/bin/aws
$aws configure add-model --service-model "file://$PWD/model/lambda-microvms-2025-09-09.json" --service-name lambda-microvms
microvms() { echo "\$ aws lambda-microvms $*" >&2; $aws --endpoint-url "$endpoint" lambda-microvms "$@"; }

name="demo-$(date +%s)"
app=$(mktemp -d)
printf '#!/bin/sh\nexec httpd -f -p 8080 -h /var/task\n' > "$app/bootstrap"
chmod +x "$app/bootstrap"
echo "hello from $name" > "$app/index.html"

microvms list-managed-microvm-images --query 'items[].imageArn'
microvms create-microvm-image --name "$name" \
  --base-image-arn "arn:aws:lambda:$AWS_DEFAULT_REGION:aws:microvm-image:busybox" \
  --build-role-arn "arn:aws:iam::000000000000:role/demo" \
  --code-artifact "uri=file://$app" --environment-variables GREETING=hello --tags project=demo
microvms get-microvm-image --image-identifier "$name"
microvm=$(microvms run-microvm --image-identifier "$name" --query microvmId --output text)
microvms get-microvm --microvm-identifier "$microvm"
microvms create-microvm-auth-token --microvm-identifier "$microvm" --allowed-ports port=8080 --expiration-in-minutes 15 \
  --query 'keys(authToken)'
microvms terminate-microvm --microvm-identifier "$microvm"
microvms get-microvm --microvm-identifier "$microvm" --query '{state: state, stateReason: stateReason}'
