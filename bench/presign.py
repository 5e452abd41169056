#!/usr/bin/env python3
"""Prints a presigned S3 URL (AWS Signature Version 4, query-string auth, path-style).

Usage: presign.py METHOD ENDPOINT BUCKET KEY [SECONDS]
Credentials and region come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_REGION
(as `tests/harness/s3 up` exports them). Used by bench/run to measure the S3 server's own
rate for GETs of a small object, with no registry in between. Standard library only.
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import os
import sys
import urllib.parse


def sign(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def presign(method: str, endpoint: str, bucket: str, key: str, seconds: int) -> str:
    access = os.environ["AWS_ACCESS_KEY_ID"]
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    region = os.environ.get("AWS_REGION", "us-east-1")
    url = urllib.parse.urlsplit(endpoint)
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    scope = f"{day}/{region}/s3/aws4_request"
    path = "/" + urllib.parse.quote(f"{bucket}/{key}", safe="/-_.~")
    query = {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{access}/{scope}",
        "X-Amz-Date": stamp,
        "X-Amz-Expires": str(seconds),
        "X-Amz-SignedHeaders": "host",
    }
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(query.items())
    )
    canonical = "\n".join(
        [method, path, canonical_query, f"host:{url.netloc}\n", "host", "UNSIGNED-PAYLOAD"]
    )
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    signing_key = sign(sign(sign(sign(f"AWS4{secret}".encode(), day), region), "s3"), "aws4_request")
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    return f"{url.scheme}://{url.netloc}{path}?{canonical_query}&X-Amz-Signature={signature}"


def main() -> int:
    if len(sys.argv) not in (5, 6):
        sys.stderr.write(__doc__ or "")
        return 2
    method, endpoint, bucket, key = sys.argv[1:5]
    seconds = int(sys.argv[5]) if len(sys.argv) == 6 else 3600
    print(presign(method.upper(), endpoint, bucket, key, seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
