"""Produces sas_vectors.json with the official Azure Storage SDK for Python.

Command that produced the committed file (run from the repository root):

    python3 -m venv /tmp/sasvenv && /tmp/sasvenv/bin/pip install azure-storage-blob==12.31.1
    /tmp/sasvenv/bin/python storage/testdata/gen_sas_vectors.py > storage/testdata/sas_vectors.json

The Rust signer (storage/src/sas.rs) must reproduce every token byte for byte.
"""
import json
import sys
from datetime import datetime, timezone

import azure.storage.blob as blob
from azure.storage.blob import (
    UserDelegationKey,
    generate_account_sas,
    generate_blob_sas,
)
from azure.storage.blob._shared.constants import X_MS_VERSION

KEYS = [
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==",
    "bm90LWEtcmVhbC1rZXktanVzdC10ZXN0LWJ5dGVzLTAxMjM0NTY3ODk=",
]


def t(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).astimezone(timezone.utc)


vectors = {"sdk": f"azure-storage-blob {blob.__version__}", "version": X_MS_VERSION,
           "account": [], "blob": [], "user_delegation": []}

for account, key, services, srt, perms, start, expiry, protocol in [
    ("devstoreaccount1", KEYS[0], "bq", "sco", "rwdlacup", None, "2026-11-22T11:00:00Z", None),
    ("devstoreaccount1", KEYS[0], "q", "o", "rp", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "https,http"),
    ("piesacct", KEYS[1], "b", "c", "rl", "2030-06-15T12:34:56Z", "2030-06-15T13:34:56Z", "https"),
]:
    token = generate_account_sas(
        account, key, srt, perms, t(expiry), start=t(start) if start else None,
        services=services, protocol=protocol)
    vectors["account"].append({
        "account": account, "key": key, "services": services, "resource_types": srt,
        "permissions": perms, "start": start, "expiry": expiry, "protocol": protocol,
        "token": token})

for account, key, container, name, perms, start, expiry, protocol, ctype in [
    ("devstoreaccount1", KEYS[0], "results", "registrations/0b9f.json", "r", None, "2026-11-22T11:00:00Z", None, None),
    ("devstoreaccount1", KEYS[0], "results", "a b+c.json", "r", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", "https,http", "application/json"),
    ("piesacct", KEYS[1], "readmodels", "inventory.json", "rw", None, "2031-02-03T04:05:06Z", "https", None),
]:
    token = generate_blob_sas(
        account, container, name, account_key=key, permission=perms, expiry=t(expiry),
        start=t(start) if start else None, protocol=protocol, content_type=ctype)
    vectors["blob"].append({
        "account": account, "key": key, "container": container, "blob": name,
        "permissions": perms, "start": start, "expiry": expiry, "protocol": protocol,
        "content_type": ctype, "token": token})

udk = UserDelegationKey()
udk.signed_oid = "6c5a3b8e-0000-4000-8000-0123456789ab"
udk.signed_tid = "72f988bf-0000-4000-8000-0123456789ab"
udk.signed_start = "2026-11-22T10:00:00Z"
udk.signed_expiry = "2026-11-29T10:00:00Z"
udk.signed_service = "b"
udk.signed_version = "2026-10-06"
udk.value = KEYS[1]
for account, container, name, perms, start, expiry, protocol in [
    ("piesacct", "results", "registrations/0b9f.json", "r", None, "2026-11-22T11:00:00Z", "https"),
    ("piesacct", "results", "x.json", "r", "2026-11-22T10:00:00Z", "2026-11-22T11:00:00Z", None),
]:
    token = generate_blob_sas(
        account, container, name, user_delegation_key=udk, permission=perms,
        expiry=t(expiry), start=t(start) if start else None, protocol=protocol)
    vectors["user_delegation"].append({
        "account": account, "container": container, "blob": name, "permissions": perms,
        "start": start, "expiry": expiry, "protocol": protocol,
        "key": {k: getattr(udk, k) for k in ("signed_oid", "signed_tid", "signed_start",
                                             "signed_expiry", "signed_service",
                                             "signed_version", "value")},
        "token": token})

json.dump(vectors, sys.stdout, indent=2)
sys.stdout.write("\n")
