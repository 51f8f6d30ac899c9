#!/usr/bin/env python3
"""Serve a checkout's modules from a file-system module proxy.

    modproxy.py SRC VERSION PROXYDIR

writes, for every module under SRC (each directory with a go.mod), the
files a GOPROXY=file://PROXYDIR serves for it at VERSION: @v/list,
VERSION.info, VERSION.mod and VERSION.zip, the zip laid out as the go
command makes it (module@version/ prefix; no nested module, no .git, no
vendor directory). Module paths here are lower case, so need no escaping.
"""
import json
import os
import sys
import zipfile


def module_path(gomod):
    for line in open(gomod):
        if line.startswith("module "):
            return line.split()[1]
    raise SystemExit(f"{gomod}: no module line")


def main():
    src, version, proxy = sys.argv[1:4]
    roots = sorted(d for d, _, files in os.walk(src) if "go.mod" in files and "/." not in d[len(src):])
    for root in roots:
        path = module_path(os.path.join(root, "go.mod"))
        out = os.path.join(proxy, path, "@v")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "list"), "w") as f:
            f.write(version + "\n")
        with open(os.path.join(out, version + ".info"), "w") as f:
            json.dump({"Version": version, "Time": "2026-01-01T00:00:00Z"}, f)
        with open(os.path.join(root, "go.mod"), "rb") as f:
            mod = f.read()
        with open(os.path.join(out, version + ".mod"), "wb") as f:
            f.write(mod)
        prefix = f"{path}@{version}/"
        with zipfile.ZipFile(os.path.join(out, version + ".zip"), "w", zipfile.ZIP_DEFLATED) as z:
            for d, dirs, files in os.walk(root):
                if d != root and "go.mod" in files:
                    dirs[:] = []  # a nested module: its own zip
                    continue
                dirs[:] = [x for x in dirs if not x.startswith(".") and x != "vendor"]
                for name in files:
                    full = os.path.join(d, name)
                    if os.path.islink(full):
                        continue
                    z.write(full, prefix + os.path.relpath(full, root))
        print(f"modproxy: {path}@{version}")


main()
