"""Sends inventory commands as a Python producer would, with the official Azure SDK.

A small command is one queue message. A large one goes through the claim check: the body is
uploaded to a blob in the app's claim-check container, then a small envelope naming it (size,
content type, SHA-256) is enqueued. This is the README's example; the reference app's tests
(`tests/stocktake.rs`) run it against Azurite.

Usage: send_commands.py < args.json, an object with connectionString, queue, container (claim check),
base64 (encode message text, as TextBase64EncodePolicy does), and commands: a list of command
objects. Prints one JSON line per command: {"claimed": <blob name or null>}.
"""

import hashlib
import json
import sys
import uuid

from azure.storage.blob import BlobServiceClient, ContentSettings
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

# Bodies above this travel as blobs (the CqrsApp's claimCheck.thresholdBytes).
THRESHOLD_BYTES = 48 * 1024


def send_command(connection_string, queue, container, command, base64_messages=False):
    """Enqueues `command` (a dict); returns the claim-check blob name, or None if inline."""
    policy = TextBase64EncodePolicy() if base64_messages else None
    queue_client = QueueClient.from_connection_string(
        connection_string, queue, message_encode_policy=policy
    )
    body = json.dumps(command).encode()
    if len(body) <= THRESHOLD_BYTES:
        queue_client.send_message(body.decode())
        return None
    blob_name = f"{queue}/{uuid.uuid4()}"
    blobs = BlobServiceClient.from_connection_string(connection_string)
    blobs.get_blob_client(container, blob_name).upload_blob(
        body, content_settings=ContentSettings(content_type="application/json")
    )
    envelope = {
        "claimCheck": {
            "version": 1,
            "container": container,
            "blob": blob_name,
            "size": len(body),
            "contentType": "application/json",
            "sha256": hashlib.sha256(body).hexdigest(),
        }
    }
    queue_client.send_message(json.dumps(envelope))
    return blob_name


def main():
    args = json.load(sys.stdin)
    for command in args["commands"]:
        claimed = send_command(
            args["connectionString"],
            args["queue"],
            args["container"],
            command,
            base64_messages=args.get("base64", False),
        )
        print(json.dumps({"claimed": claimed}))


if __name__ == "__main__":
    main()
