"""Container health probe without curl: GET http://127.0.0.1:$EDGESAM_HTTP_PORT/<path>.

Exit 0 on HTTP 200, 1 otherwise. Default path /readyz (the container is healthy once it
can serve); pass /healthz for liveness only.
"""

import os
import sys
import urllib.error
import urllib.request


def main(argv):
    path = argv[1] if len(argv) > 1 else "/readyz"
    port = os.environ.get("EDGESAM_HTTP_PORT", "8000")
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        sys.stderr.write(f"{url}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
