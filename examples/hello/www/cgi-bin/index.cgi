#!/bin/sh
# stderr reaches the host as "stderr" frames (httpd passes it through).
echo "index.cgi: $REQUEST_METHOD $REQUEST_URI from $REMOTE_ADDR" >&2
printf 'Content-Type: text/plain\r\n\r\n'
echo "$GREETING (host $(hostname), uid $(id -u), up $(cut -d' ' -f1 /proc/uptime)s)"
