"""Container health probe without curl: GET http(s)://127.0.0.1:$EDGESAM_HTTP_PORT/<path>.

Exit 0 on HTTP 200, 1 otherwise. Default path /readyz (the container is healthy once it
can serve); pass /healthz for liveness only. With EDGESAM_TLS_CERT_FILE set the probe speaks
HTTPS (not verifying the certificate: it asks its own process over loopback), and under mTLS
(EDGESAM_TLS_CLIENT_CA_FILE) it presents the server's own certificate and key, which works
when that CA signed them without restricting them to server use.
"""

import os
import ssl
import sys
import urllib.error
import urllib.request


def _context():
    if not os.environ.get("EDGESAM_TLS_CERT_FILE"):
        return None
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if os.environ.get("EDGESAM_TLS_CLIENT_CA_FILE"):
        context.load_cert_chain(
            os.environ["EDGESAM_TLS_CERT_FILE"], os.environ.get("EDGESAM_TLS_KEY_FILE")
        )
    return context


def main(argv):
    path = argv[1] if len(argv) > 1 else "/readyz"
    port = os.environ.get("EDGESAM_HTTP_PORT", "8000")
    context = _context()
    scheme = "https" if context is not None else "http"
    url = f"{scheme}://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
