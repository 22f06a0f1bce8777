#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
echo "$GREETING (host $(hostname), uid $(id -u), up $(cut -d' ' -f1 /proc/uptime)s)"
