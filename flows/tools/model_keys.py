"""Key pair for signed model descriptors: `python -m flows.tools.model_keys --out DIR`.

Writes `DIR/model-signing.key` (the private key, PKCS#8 PEM, readable by its owner only: keep it with
whoever publishes models) and `DIR/model-signing.pub` (PEM), and prints the base64 public key to put in
SERVING_MODEL_TRUSTED_KEYS. Sign with `python -m flows.tools.publish_model --sign DIR/model-signing.key ...`.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

from flows.core.admission.signing import new_private_key, private_key_pem, public_key_pem, raw_public_key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="serving-model-keys", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="directory to write the key pair into")
    parser.add_argument("--name", default="model-signing", help="file name stem (default: model-signing)")
    args = parser.parse_args(argv)

    private_path, public_path = args.out / f"{args.name}.key", args.out / f"{args.name}.pub"
    if private_path.exists() or public_path.exists():
        print(f"refused: {private_path} or {public_path} exists; not overwriting a key", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    key = new_private_key()
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as private_file:
        private_file.write(private_key_pem(key))
    public_path.write_bytes(public_key_pem(key.public_key()))
    print(f"private key: {private_path} (keep it secret)")
    print(f"public key:  {public_path}")
    print(f"SERVING_MODEL_TRUSTED_KEYS={base64.b64encode(raw_public_key(key.public_key())).decode()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
