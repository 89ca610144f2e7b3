"""The bytes of snapshots, deltas, manifests, roots and keys: the only code that knows them.

docs/FORMAT.md is the specification; it and these modules change together. Each
module owns one part of it and imports only modules listed above it:

    keys        Ed25519 key ids, public and private key text, signature checks
    strictjson  canonical JSON out, strict JSON in, typed fields and list names
    envelope    signed JSON documents: signatures written, read within bounds, thresholds
    digestset   sorted 8-byte digest arrays, their bytes and the set checksum
    bloom       pybloom-live filters: key strings, bit arrays and parameters
    container   the signed container of snapshots and deltas: prefix, header, sections
    artifacts   snapshots and deltas in that container, and the diff between snapshots
    root        the root document: root keys (k of n), online keys, and root rotation
    manifest    the signed manifest: file references, lists and its root version

Callers import each name from the module that owns it; this package re-exports nothing.

Readers check every length against the file and the configured limits before
they allocate, verify the signature before they trust any field, and raise
FormatError (or a subclass) for anything else.
"""
