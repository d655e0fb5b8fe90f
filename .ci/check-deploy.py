#!/usr/bin/env python3
"""Checks that the deployment files work as shipped, as far as can be told
without a cluster or a Docker daemon:

- every YAML file under deploy/ parses;
- the Kubernetes manifest meets the "restricted" Pod Security profile (and
  has a read-only root filesystem), its probes and scrape annotations point at
  the ports the embedded bot.toml listens on, and that bot.toml passes
  `access-bot check-config`;
- the Dockerfile copies only paths that exist and that .dockerignore keeps,
  builds dependencies before sources, runs as a numeric non-root user, and the
  templates folder it ships is where the configuration it ships reads them.

Usage: check-deploy.py PATH-TO-access-bot-BINARY
"""

import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def fail(msg):
    failures.append(msg)
    print(f"FAIL: {msg}")


def ok(msg):
    print(f"ok: {msg}")


def check_yaml():
    docs = {}
    for name in sorted(os.listdir(os.path.join(ROOT, "deploy"))):
        if not name.endswith((".yml", ".yaml")):
            continue
        path = os.path.join(ROOT, "deploy", name)
        try:
            with open(path) as f:
                docs[name] = [d for d in yaml.safe_load_all(f) if d is not None]
            ok(f"deploy/{name} parses ({len(docs[name])} documents)")
        except yaml.YAMLError as e:
            fail(f"deploy/{name}: {e}")
    return docs


ALLOWED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
    "persistentVolumeClaim", "projected", "secret",
}


def restricted(pod, where):
    """The Pod Security Standards' "restricted" profile, field by field."""
    psc = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            fail(f"{where}: {key} is set")
    for v in pod.get("volumes") or []:
        kinds = set(v) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            fail(f"{where}: volume {v.get('name')} of type {kinds - ALLOWED_VOLUMES}")
    containers = (pod.get("containers") or []) + (pod.get("initContainers") or [])
    if not containers:
        fail(f"{where}: no containers")
    for c in containers:
        csc = c.get("securityContext") or {}
        name = f"{where} container {c.get('name')}"

        def eff(key):
            return csc.get(key, psc.get(key))

        if eff("runAsNonRoot") is not True:
            fail(f"{name}: runAsNonRoot is not true")
        if eff("runAsUser") == 0:
            fail(f"{name}: runAsUser is 0")
        if csc.get("privileged"):
            fail(f"{name}: privileged")
        if csc.get("allowPrivilegeEscalation") is not False:
            fail(f"{name}: allowPrivilegeEscalation is not false")
        caps = csc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            fail(f"{name}: capabilities do not drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{name}: capabilities add {caps.get('add')}")
        seccomp = (eff("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{name}: seccompProfile is {seccomp!r}")
        if csc.get("readOnlyRootFilesystem") is not True:
            fail(f"{name}: readOnlyRootFilesystem is not true")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                fail(f"{name}: hostPort {p['hostPort']}")
    ok(f"{where}: restricted Pod Security profile")


def check_kubernetes(docs, binary):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d.get("kind"), []).append(d)
    ns = by_kind.get("Namespace", [{}])[0]
    if (ns.get("metadata", {}).get("labels") or {}).get("pod-security.kubernetes.io/enforce") != "restricted":
        fail("kubernetes.yaml: the namespace does not enforce the restricted profile")
    deps = by_kind.get("Deployment") or []
    if len(deps) != 1:
        fail("kubernetes.yaml: expected one Deployment")
        return
    dep = deps[0]
    tpl = dep["spec"]["template"]
    pod = tpl["spec"]
    restricted(pod, "kubernetes.yaml Deployment")
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        get = (c.get(probe) or {}).get("httpGet")
        if not get:
            fail(f"kubernetes.yaml: no {probe}")
            continue
        if get["port"] not in ports and get["port"] not in ports.values():
            fail(f"kubernetes.yaml: {probe} port {get['port']} is not a container port")
        if get["port"] not in ("ops", ports.get("ops")):
            fail(f"kubernetes.yaml: {probe} is not on the ops port")
    want = {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for probe, path in want.items():
        if (c.get(probe) or {}).get("httpGet", {}).get("path") != path:
            fail(f"kubernetes.yaml: {probe} does not ask {path}")
    ann = tpl["metadata"].get("annotations") or {}
    if ann.get("prometheus.io/scrape") != "true" or ann.get("prometheus.io/port") != str(ports.get("ops")):
        fail(f"kubernetes.yaml: scrape annotations {ann} do not point at the ops port {ports.get('ops')}")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    if "/tmp" not in mounts:
        fail("kubernetes.yaml: no writable /tmp under a read-only root filesystem")
    # The Secret's files are what the *_FILE variables name.
    secret = (by_kind.get("Secret") or [{}])[0]
    keys = set((secret.get("stringData") or {}) | (secret.get("data") or {}))
    secret_mount = next((p for p, m in mounts.items() if "secrets" in m["name"]), None)
    for e in c.get("env") or []:
        if e["name"].endswith("_FILE"):
            d, f = os.path.split(e["value"])
            if d != secret_mount or f not in keys:
                fail(f"kubernetes.yaml: {e['name']} names {e['value']}, not a key of the Secret mounted at {secret_mount}")
    # The configuration the ConfigMap ships: valid, and listening where the pod expects.
    cm = (by_kind.get("ConfigMap") or [{}])[0]
    text = (cm.get("data") or {}).get("bot.toml")
    if not text:
        fail("kubernetes.yaml: no bot.toml in the ConfigMap")
        return
    ops = re.search(r'(?ms)^\[ops\].*?^listen\s*=\s*"([^"]+)"', text)
    hook = re.search(r'(?ms)^\[webhook\].*?^listen\s*=\s*"([^"]+)"', text)
    if not ops or not ops.group(1).startswith("0.0.0.0:") or int(ops.group(1).rsplit(":", 1)[1]) != ports.get("ops"):
        fail(f"kubernetes.yaml: [ops] listen {ops and ops.group(1)} is not 0.0.0.0:{ports.get('ops')}")
    if not hook or int(hook.group(1).rsplit(":", 1)[1]) != ports.get("webhook"):
        fail(f"kubernetes.yaml: [webhook] listen {hook and hook.group(1)} is not the webhook port {ports.get('webhook')}")
    with tempfile.TemporaryDirectory() as d:
        # As in the image: the templates beside the configuration.
        os.mkdir(os.path.join(d, "templates"))
        path = os.path.join(d, "bot.toml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([binary, "--config", path, "check-config"], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"kubernetes.yaml: the ConfigMap's bot.toml: {r.stderr.strip()}")
        else:
            ok("kubernetes.yaml: the ConfigMap's bot.toml passes check-config")


def check_gitlab_ci(docs):
    jobs = {k: v for k, v in docs[0].items() if isinstance(v, dict) and "script" in v}
    if not jobs:
        fail("gitlab-ci.example.yml: no jobs")
    for name, job in jobs.items():
        for line in job["script"]:
            if line.startswith("access-bot") and "--config" in line and "ACCESS_BOT_CONFIG" not in str(docs[0].get("variables")):
                fail(f"gitlab-ci.example.yml {name}: {line}")
    ok(f"gitlab-ci.example.yml: jobs {sorted(jobs)}")


def dockerignored(path, patterns):
    first = path.split("/")[0]
    return any(p == first or p == path for p in patterns)


def check_dockerfile():
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        lines = [l.strip() for l in f if l.strip() and not l.strip().startswith("#")]
    ignore_path = os.path.join(ROOT, ".dockerignore")
    if not os.path.exists(ignore_path):
        fail("no .dockerignore")
        patterns = []
    else:
        with open(ignore_path) as f:
            patterns = [l.strip().rstrip("/") for l in f if l.strip() and not l.startswith("#")]
    for must in ("target", ".git"):
        if must not in patterns:
            fail(f".dockerignore does not leave out {must}")
    copies = []
    for l in lines:
        if l.upper().startswith("COPY ") and "--from=" not in l:
            parts = l.split()[1:]
            *srcs, dest = parts
            for s in srcs:
                copies.append((s, dest))
                if not os.path.exists(os.path.join(ROOT, s)):
                    fail(f"Dockerfile copies {s}, which does not exist")
                elif dockerignored(s, patterns):
                    fail(f"Dockerfile copies {s}, which .dockerignore leaves out")
    ok(f"Dockerfile: copies {[s for s, _ in copies]}, all present")
    # Dependencies are built before the sources arrive (layer caching).
    text = "\n".join(lines)
    first_build = text.find("cargo build")
    src_copy = text.find("COPY src ")
    if first_build < 0 or src_copy < 0 or first_build > src_copy:
        fail("Dockerfile: no dependency build before `COPY src`")
    # The shipped configuration finds the shipped templates.
    final = text[text.rfind("FROM "):]
    cfg_dest = next((d for s, d in copies if s == "bot.toml" and final.find(f"COPY bot.toml {d}") >= 0), None)
    tpl_dest = next((d.rstrip("/") for s, d in copies if s == "templates" and final.find(f"COPY templates {d}") >= 0), None)
    env_cfg = re.search(r"ACCESS_BOT_CONFIG=(\S+)", final)
    if not cfg_dest or not env_cfg or env_cfg.group(1) != cfg_dest:
        fail(f"Dockerfile: ACCESS_BOT_CONFIG {env_cfg and env_cfg.group(1)} is not where bot.toml is copied ({cfg_dest})")
    with open(os.path.join(ROOT, "bot.toml")) as f:
        m = re.search(r'^templates_dir\s*=\s*"([^"]+)"', f.read(), re.M)
    tdir = m.group(1) if m else "templates"
    resolved = os.path.normpath(os.path.join(os.path.dirname(cfg_dest or "/"), tdir))
    if resolved != tpl_dest:
        fail(f"Dockerfile: bot.toml reads templates from {resolved}, the image has them at {tpl_dest}")
    else:
        ok(f"Dockerfile: bot.toml at {cfg_dest} reads the templates at {resolved}")
    user = re.findall(r"^USER\s+(\S+)", final, re.M)
    if not user or not user[-1].split(":")[0].isdigit() or user[-1].split(":")[0] == "0":
        fail(f"Dockerfile: USER {user} is not a numeric non-root user (runAsNonRoot cannot verify a name)")
    for port in ("8080", "9090"):
        if not re.search(rf"^EXPOSE .*\b{port}\b", final, re.M):
            fail(f"Dockerfile: port {port} not exposed")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/access-bot")
    docs = check_yaml()
    if "kubernetes.yaml" in docs:
        check_kubernetes(docs["kubernetes.yaml"], binary)
    else:
        fail("no deploy/kubernetes.yaml")
    if "gitlab-ci.example.yml" in docs:
        check_gitlab_ci(docs["gitlab-ci.example.yml"])
    check_dockerfile()
    if failures:
        print(f"{len(failures)} deployment check(s) failed")
        sys.exit(1)
    print("deployment files: all checks passed")


if __name__ == "__main__":
    main()
