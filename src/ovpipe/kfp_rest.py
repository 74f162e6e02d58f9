"""A small client of the Kubeflow Pipelines v2beta1 REST API (KFP 2.15–2.17), with the calls `ovpipe kfp`
makes: upload a pipeline (or a new version of it), experiments, runs, retry, recurring runs. Plain HTTP
(urllib), so it needs no kfp package and the library stays kfp-free.

Authentication as Kubeflow deployments do it: a bearer token from KFP_TOKEN, from the file
KF_PIPELINES_SA_TOKEN_PATH (default /var/run/secrets/kubeflow/pipelines/token, what a pod's projected
token gives), or the current kube-config user's token; none for an open endpoint. TLS is verified
(KFP_CA_BUNDLE or the system's CAs) unless the caller asks for insecure.

Facts of the 2.17 server this follows: errors are {code, message, details}; lists answer {} when
empty; the upload query parameter of a version's pipeline is `pipelineid`; retry is
POST /runs/{id}:retry, only on a FAILED run (409 otherwise), keeps the run id and reruns the failed
tasks and what depends on them; a recurring run needs mode ENABLE and max_concurrency 1–10.
"""
from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid

API = "/apis/v2beta1"
POD_TOKEN = "/var/run/secrets/kubeflow/pipelines/token"


class KfpError(RuntimeError):
    """A KFP API call failed: the method, path, HTTP status and the server's own message."""

    def __init__(self, method: str, path: str, status: int | None, message: str):
        self.status = status
        super().__init__(f"KFP {method} {path}: {status or 'no answer'}: {message}")


def find_token(environ=os.environ) -> str | None:
    """KFP_TOKEN, else the token file, else the kube config's current user token (or tokenFile)."""
    if environ.get("KFP_TOKEN"):
        return environ["KFP_TOKEN"].strip()
    path = environ.get("KF_PIPELINES_SA_TOKEN_PATH") or POD_TOKEN
    if os.path.isfile(path):
        with open(path) as f:
            return f.read().strip()
    if environ.get("KF_PIPELINES_SA_TOKEN_PATH"):
        raise KfpError("-", "auth", None, f"KF_PIPELINES_SA_TOKEN_PATH={path}: no such file")
    return _kubeconfig_token(environ)


def _kubeconfig_token(environ) -> str | None:
    import yaml

    path = (environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")).split(os.pathsep)[0]
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        cfg = yaml.safe_load(f) or {}
    contexts = {c["name"]: c.get("context", {}) for c in cfg.get("contexts") or []}
    user_name = contexts.get(cfg.get("current-context"), {}).get("user")
    user = next((u.get("user", {}) for u in cfg.get("users") or [] if u.get("name") == user_name), {})
    if user.get("token"):
        return user["token"]
    if user.get("tokenFile") and os.path.isfile(user["tokenFile"]):
        with open(user["tokenFile"]) as f:
            return f.read().strip()
    return None


class Client:
    def __init__(self, host: str, token: str | None = None, insecure: bool = False, ca_file: str | None = None,
                 timeout: float = 60.0):
        if not host.startswith(("http://", "https://")):
            raise ValueError(f"KFP host {host!r}: expected http(s)://… (e.g. https://kubeflow.example.org/pipeline)")
        self.host, self.token, self.timeout = host.rstrip("/"), token, timeout
        ca_file = ca_file or os.environ.get("KFP_CA_BUNDLE")
        self._ssl = ssl._create_unverified_context() if insecure else ssl.create_default_context(cafile=ca_file)
        self._multi_user: bool | None = None

    # ------------------------------------------------------------------ transport

    def call(self, method: str, path: str, query: dict | None = None, body: dict | None = None,
             upload: tuple[str, bytes] | None = None) -> dict:
        url = self.host + API + path + ("?" + urllib.parse.urlencode(query) if query else "")
        headers = {"Accept": "application/json"}
        data = None
        if upload is not None:
            boundary = uuid.uuid4().hex
            name, content = upload
            head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"uploadfile\"; filename=\"{name}\"\r\n"
                    "Content-Type: application/octet-stream\r\n\r\n")
            data = head.encode() + content + f"\r\n--{boundary}--\r\n".encode()
            headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl) as resp:
                text = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise KfpError(method, path, exc.code, _server_message(exc.read().decode(errors="replace"))) from None
        except (urllib.error.URLError, OSError) as exc:
            raise KfpError(method, path, None, f"{getattr(exc, 'reason', exc)} (is {self.host} the KFP API?)") from None
        return json.loads(text) if text.strip() else {}

    def multi_user(self) -> bool:
        if self._multi_user is None:
            self._multi_user = bool(self.call("GET", "/healthz").get("multi_user"))
        return self._multi_user

    # ------------------------------------------------------------------ pipelines

    def find_pipeline(self, name: str, namespace: str = "") -> dict | None:
        query = {"filter": _equals("display_name", name), "page_size": 1}
        if namespace and self.multi_user():
            query["namespace"] = namespace
        found = self.call("GET", "/pipelines", query).get("pipelines") or []
        return found[0] if found else None

    def versions(self, pipeline_id: str) -> list[dict]:
        return self.call("GET", f"/pipelines/{pipeline_id}/versions", {"page_size": 200}).get("pipeline_versions") or []

    def upload_pipeline(self, name: str, filename: str, content: bytes, description: str = "",
                        namespace: str = "") -> dict:
        query = {"name": name, "display_name": name, "description": description}
        if namespace and self.multi_user():
            query["namespace"] = namespace
        return self.call("POST", "/pipelines/upload", query, upload=(filename, content))

    def upload_version(self, pipeline_id: str, name: str, filename: str, content: bytes, description: str = "") -> dict:
        query = {"pipelineid": pipeline_id, "name": name, "display_name": name, "description": description}
        return self.call("POST", "/pipelines/upload_version", query, upload=(filename, content))

    # ------------------------------------------------------------------ experiments, runs

    def experiment_id(self, name: str, namespace: str = "") -> str:
        """The id of the experiment of that name, created when missing."""
        query = {"filter": _equals("display_name", name), "page_size": 1}
        body = {"display_name": name}
        if namespace and self.multi_user():
            query["namespace"] = body["namespace"] = namespace
        found = self.call("GET", "/experiments", query).get("experiments") or []
        if found:
            return found[0]["experiment_id"]
        try:
            return self.call("POST", "/experiments", body=body)["experiment_id"]
        except KfpError as exc:  # created meanwhile by another client
            if exc.status != 409:
                raise
            return self.call("GET", "/experiments", query)["experiments"][0]["experiment_id"]

    def create_run(self, display_name: str, experiment_id: str, pipeline_id: str, version_id: str,
                   parameters: dict, service_account: str = "", description: str = "") -> dict:
        body = {"display_name": display_name, "description": description, "experiment_id": experiment_id,
                "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": version_id},
                "runtime_config": {"parameters": parameters}}
        if service_account:
            body["service_account"] = service_account
        return self.call("POST", "/runs", body=body)

    def get_run(self, run_id: str) -> dict:
        return self.call("GET", f"/runs/{urllib.parse.quote(run_id, safe='')}")

    def retry_run(self, run_id: str) -> dict:
        return self.call("POST", f"/runs/{urllib.parse.quote(run_id, safe='')}:retry")

    def create_recurring_run(self, display_name: str, experiment_id: str, pipeline_id: str, version_id: str,
                             cron: str, parameters: dict, service_account: str = "", description: str = "",
                             max_concurrency: int = 1) -> dict:
        body = {"display_name": display_name, "description": description, "experiment_id": experiment_id,
                "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": version_id},
                "runtime_config": {"parameters": parameters},
                "trigger": {"cron_schedule": {"cron": cron}}, "max_concurrency": str(max_concurrency),
                "mode": "ENABLE", "no_catchup": True}
        if service_account:
            body["service_account"] = service_account
        return self.call("POST", "/recurringruns", body=body)

    def recurring_runs(self, experiment_id: str) -> list[dict]:
        return self.call("GET", "/recurringruns", {"experiment_id": experiment_id, "page_size": 200}).get(
            "recurringRuns") or []

    def run_url(self, run_id: str) -> str:
        """The run's page in the KFP UI (served beside the API)."""
        return f"{self.host}/#/runs/details/{run_id}"


def _equals(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, "string_value": value}]})


def _server_message(text: str) -> str:
    """The server's own words: {code, message} (API), {error_message} (uploads), or the raw text."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "(empty answer)"
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error_message") or body.get("error") or body)[:1000]
    return str(body)[:1000]
