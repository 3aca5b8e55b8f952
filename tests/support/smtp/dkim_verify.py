"""An independent DKIM verifier for mailbridge's relay tests (dkimpy, PyPI; Ed25519 needs PyNaCl).

Usage: dkim_verify.py MESSAGE_FILE RECORD
Verifies the first DKIM-Signature of the message against RECORD (the TXT value, e.g.
"v=DKIM1; k=rsa; p=..."), served for any selector and domain without DNS.
Prints "pass" (exit 0) or "fail: <why>" (exit 1).
"""

import logging
import sys

import dkim


def main():
    path, record = sys.argv[1], sys.argv[2].encode()
    with open(path, "rb") as f:
        message = f.read()
    logging.basicConfig(level=logging.CRITICAL)

    def dnsfunc(name, timeout=5):
        return record

    try:
        ok = dkim.verify(message, dnsfunc=dnsfunc)
    except Exception as e:  # a malformed signature is a failure, with its reason
        print("fail: %s" % e)
        return 1
    if ok:
        print("pass")
        return 0
    d = dkim.DKIM(message)
    try:
        d.verify(dnsfunc=dnsfunc)
    except Exception as e:
        print("fail: %s" % e)
        return 1
    print("fail: signature did not verify")
    return 1


if __name__ == "__main__":
    sys.exit(main())
