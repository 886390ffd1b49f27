"""Checks of the deployment examples in deploy/ against the real binary (scripts/test.sh runs it).

    .venv/bin/python scripts/check_deploy.py [-v]     # CHAT_BIN: the chat-service binary

- the systemd unit: `systemd-analyze verify` (with ExecStart pointed at the binary under test:
  verify wants it to exist) says nothing, its offline security review stays under an exposure
  threshold, the keys the README promises are there, the stop timeout covers the drain, and
  every variable it or its environment file names is one the binary reads;
- the Kubernetes manifests: valid against the API schemas of the oldest and newest supported
  Kubernetes (kubernetes-validate --strict), probes on /ready and /health that the binary
  really answers with 200, one port everywhere, selectors that match, a grace period that
  covers the drain, only real variables in the ConfigMap and the Secret example, and the
  Secret example keeps the pods from starting until it is filled in.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
UNIT = DEPLOY / "chat-service.service"
ENV_FILE = DEPLOY / "chat-service.env"
BIN = os.environ.get("CHAT_BIN") or str(ROOT / "target" / "debug" / "chat-service")

# Kubernetes versions the manifests must be valid for: the preStop `sleep` action needs 1.30.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
# systemd-analyze security: overall exposure 0-10, written x10 for --threshold (1.1 today).
EXPOSURE_THRESHOLD = 15
# Graceful shutdown steps, each bounded by SHUTDOWN_TIMEOUT_SECS (src/app.rs,
# run_until_stopped: workers, HTTP server, outbox relay, store).
SHUTDOWN_STEPS = 4
# Read by the binary but not one of its flags (tracing's filter).
EXTRA_VARIABLES = {"RUST_LOG"}


def run_help():
    if not os.access(BIN, os.X_OK):
        sys.exit(f"no chat-service binary at {BIN}: cargo build, or set CHAT_BIN")
    out = subprocess.run([BIN, "--help"], capture_output=True, text=True, check=True).stdout
    variables = set(re.findall(r"\[env: ([A-Z][A-Z0-9_]*)", out))
    defaults = dict(re.findall(r"\[env: ([A-Z][A-Z0-9_]*)=[^\]]*\] \[default: ([^\]]+)\]", out))
    return variables | EXTRA_VARIABLES, defaults


VARIABLES, DEFAULTS = run_help()


def unit_entries(text):
    """systemd unit -> [(section, key, value)] (keys repeat: a list, not a dict)."""
    entries, section = [], None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def seconds(value):
    m = re.fullmatch(r"(\d+)\s*(s|sec|min)?", value)
    assert m, f"not a duration in seconds: {value!r}"
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1)


def env_file_names(text):
    """Variables an environment file sets, and those it shows commented out (`# NAME=`)."""
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, re.M))


def manifests():
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path.name, doc))
    return docs


def kind(name):
    found = [doc for _, doc in manifests() if doc.get("kind") == name]
    assert len(found) == 1, f"one {name} expected, found {len(found)}"
    return found[0]


class SystemdUnit(unittest.TestCase):
    def setUp(self):
        self.entries = unit_entries(UNIT.read_text())
        self.service = {}
        for section, key, value in self.entries:
            if section == "Service":
                self.service.setdefault(key, []).append(value)

    def one(self, key):
        values = self.service.get(key, [])
        self.assertEqual(len(values), 1, f"[Service] {key}= once: {values}")
        return values[0]

    def unit_under_test(self, directory):
        """The unit with ExecStart pointed at the binary under test (verify wants it to exist)."""
        exec_start = self.one("ExecStart")
        self.assertEqual(Path(exec_start.split()[0]).name, "chat-service")
        text = UNIT.read_text().replace(f"ExecStart={exec_start}", f"ExecStart={BIN}", 1)
        path = Path(directory) / UNIT.name
        path.write_text(text)
        return path

    def test_systemd_analyze_verify_is_silent(self):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run(
                ["systemd-analyze", "verify", "--man=no", str(self.unit_under_test(d))],
                capture_output=True, text=True,
            )
        self.assertEqual((r.returncode, r.stdout + r.stderr), (0, ""))

    def test_security_review_stays_under_the_exposure_threshold(self):
        with tempfile.TemporaryDirectory() as d:
            r = subprocess.run(
                ["systemd-analyze", "security", "--offline=true",
                 f"--threshold={EXPOSURE_THRESHOLD}", str(self.unit_under_test(d))],
                capture_output=True, text=True,
            )
        overall = [line for line in r.stdout.splitlines() if "Overall exposure" in line]
        self.assertEqual(r.returncode, 0, f"{overall}\n{r.stdout[-3000:]}{r.stderr}")

    def test_service_keys(self):
        self.assertEqual(self.one("Type"), "simple")
        self.assertEqual(self.one("Restart"), "on-failure")
        self.assertEqual(self.one("KillSignal"), "SIGTERM")
        self.assertTrue(self.one("DynamicUser") == "yes" or "User" in self.service)
        self.assertGreaterEqual(int(self.one("LimitNOFILE")), 65536)
        self.assertEqual(self.one("CapabilityBoundingSet"), "")
        for key in ["NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                    "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs",
                    "ProtectControlGroups", "RestrictNamespaces", "LockPersonality",
                    "MemoryDenyWriteExecute"]:
            self.assertEqual(self.one(key), "yes", key)
        self.assertEqual(self.one("ProtectSystem"), "strict")
        self.assertIn("@system-service", self.service.get("SystemCallFilter", []))
        self.assertEqual(set(self.one("RestrictAddressFamilies").split()),
                         {"AF_INET", "AF_INET6", "AF_UNIX"})
        self.assertTrue(self.one("EnvironmentFile").lstrip("-").startswith("/etc/"))

    def environment(self):
        return dict(v.split("=", 1) for v in self.service.get("Environment", []))

    def test_data_dir_is_the_state_directory(self):
        state = self.one("StateDirectory")
        self.assertEqual(self.environment().get("DATA_DIR"), f"%S/{state}")
        self.assertNotIn("DATA_DIR", env_file_names(ENV_FILE.read_text()),
                         "the environment file would move DATA_DIR out of the state directory")

    def test_stop_timeout_covers_the_drain(self):
        env = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", ENV_FILE.read_text(), re.M))
        drain = SHUTDOWN_STEPS * int(env.get("SHUTDOWN_TIMEOUT_SECS", DEFAULTS["SHUTDOWN_TIMEOUT_SECS"]))
        self.assertGreater(seconds(self.one("TimeoutStopSec")), drain)

    def test_only_real_variables(self):
        names = set(self.environment()) | env_file_names(ENV_FILE.read_text())
        self.assertEqual(names - VARIABLES, set(), "not variables of chat-service")


class Kubernetes(unittest.TestCase):
    def setUp(self):
        self.deployment = kind("Deployment")
        self.pod = self.deployment["spec"]["template"]
        containers = self.pod["spec"]["containers"]
        self.assertEqual(len(containers), 1)
        self.container = containers[0]
        self.config = kind("ConfigMap")["data"]

    def test_manifests_match_the_api_schemas(self):
        files = [p for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml"]
        args = [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet"]
        for v in K8S_VERSIONS:
            args += ["-k", v]
        r = subprocess.run(args + [str(p) for p in files], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertNotIn("WARN", r.stdout + r.stderr)

    def test_kustomization_applies_everything_but_the_secret_example(self):
        listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
        files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
        self.assertEqual(listed, files - {"secret.example.yaml"})

    def port(self):
        return int(self.config.get("PORT", DEFAULTS["PORT"]))

    def test_one_port_everywhere(self):
        (port,) = self.container["ports"]
        self.assertEqual(port["containerPort"], self.port())
        service = kind("Service")
        (service_port,) = service["spec"]["ports"]
        self.assertIn(service_port["targetPort"], (port["name"], port["containerPort"]))
        for probe in ["startupProbe", "livenessProbe", "readinessProbe"]:
            self.assertIn(self.container[probe]["httpGet"]["port"], (port["name"], port["containerPort"]))

    def test_probes(self):
        self.assertEqual(self.container["readinessProbe"]["httpGet"]["path"], "/ready")
        self.assertEqual(self.container["livenessProbe"]["httpGet"]["path"], "/health")

    def test_the_binary_answers_every_probe_path(self):
        paths = {self.container[p]["httpGet"]["path"]
                 for p in ["startupProbe", "livenessProbe", "readinessProbe"]}
        with tempfile.TemporaryDirectory() as d:
            env = {"PATH": os.environ.get("PATH", ""), "PORT": "0", "HOST": "127.0.0.1",
                   "DATA_DIR": d, "RUST_LOG": "error"}
            with subprocess.Popen([BIN], env=env, cwd=d, stdout=subprocess.PIPE, text=True) as server:
                try:
                    line = server.stdout.readline()
                    self.assertTrue(line.startswith("listening on http://"), line)
                    base = line.split(" ", 2)[2].strip()
                    for path in sorted(paths):
                        with urllib.request.urlopen(base + path, timeout=5) as r:
                            self.assertEqual(r.status, 200, path)
                finally:
                    server.terminate()
                    server.wait(timeout=30)

    def test_selectors_match_the_pods(self):
        labels = self.pod["metadata"]["labels"]
        selectors = [self.deployment["spec"]["selector"]["matchLabels"],
                     kind("PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
                     kind("Service")["spec"]["selector"]]
        for selector in selectors:
            self.assertTrue(selector.items() <= labels.items(), selector)

    def test_polling_clients_stay_on_one_pod(self):
        self.assertEqual(kind("Service")["spec"]["sessionAffinity"], "ClientIP")

    def test_grace_period_covers_the_pause_and_the_drain(self):
        pause = self.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        timeout = int(self.config.get("SHUTDOWN_TIMEOUT_SECS", DEFAULTS["SHUTDOWN_TIMEOUT_SECS"]))
        self.assertGreater(self.pod["spec"]["terminationGracePeriodSeconds"],
                           pause + SHUTDOWN_STEPS * timeout)

    def test_unprivileged_with_a_read_only_root(self):
        self.assertTrue(self.pod["spec"]["securityContext"]["runAsNonRoot"])
        sc = self.container["securityContext"]
        self.assertTrue(sc["readOnlyRootFilesystem"])
        self.assertFalse(sc["allowPrivilegeEscalation"])
        self.assertEqual(sc["capabilities"]["drop"], ["ALL"])
        mounts = {m["mountPath"] for m in self.container["volumeMounts"]}
        self.assertIn(self.config.get("DATA_DIR", DEFAULTS["DATA_DIR"]), mounts)

    def test_only_real_variables(self):
        secret = kind("Secret")["stringData"]
        names = set(self.config) | set(secret)
        names |= {e["name"] for e in self.container.get("env", [])}
        self.assertEqual(names - VARIABLES, set(), "not variables of chat-service")
        refs = {r.get("configMapRef", r.get("secretRef"))["name"] for r in self.container["envFrom"]}
        self.assertEqual(refs, {kind("ConfigMap")["metadata"]["name"], kind("Secret")["metadata"]["name"]})

    def test_the_unfilled_secret_example_keeps_the_pod_from_starting(self):
        env = {k: str(v) for k, v in self.config.items()}
        env.update({k: str(v) for k, v in kind("Secret")["stringData"].items()})
        with tempfile.TemporaryDirectory() as d:
            env.update({"PATH": os.environ.get("PATH", ""), "PORT": "0", "HOST": "127.0.0.1",
                        "DATA_DIR": d})
            r = subprocess.run([BIN], env=env, cwd=d, capture_output=True, text=True, timeout=60)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertNotIn("listening on", r.stdout)


if __name__ == "__main__":
    if not shutil.which("systemd-analyze"):
        sys.exit("systemd-analyze is missing: scripts/setup.sh installs it (Debian package systemd)")
    unittest.main()
