#!/usr/bin/env python3
"""Writes (or extends) an OCI image layout with one image of three random
gzip layers, one over the cache's 1 MiB memory_object_max (served from
the disk tier, in more than one 2 MiB map window): mklayout.py DIR TAG SEED."""
import hashlib, json, os, sys, tarfile, io, gzip
out = sys.argv[1]; tag = sys.argv[2]; seed = int(sys.argv[3])
os.makedirs(f"{out}/blobs/sha256", exist_ok=True)
def put(b):
    d = hashlib.sha256(b).hexdigest()
    open(f"{out}/blobs/sha256/{d}", "wb").write(b)
    return d
layers = []; diffs = []
for i, size in enumerate([300_000 + seed, 40_000, 5_000_000 + seed]):
    data = os.urandom(size)
    tb = io.BytesIO()
    with tarfile.open(fileobj=tb, mode="w") as t:
        ti = tarfile.TarInfo(f"file{i}"); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
    raw = tb.getvalue(); gz = gzip.compress(raw)
    diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
    layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + put(gz), "size": len(gz)})
cfg = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + put(cfg), "size": len(cfg)},
  "layers": layers}).encode()
md = put(man)
idx_path = f"{out}/index.json"
idx = json.load(open(idx_path)) if os.path.exists(idx_path) else {"schemaVersion": 2, "manifests": []}
idx["manifests"].append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md, "size": len(man), "annotations": {"org.opencontainers.image.ref.name": tag}})
json.dump(idx, open(idx_path, "w"))
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
