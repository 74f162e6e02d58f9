"""Stateful loopback stub of the Kubeflow Pipelines 2.17 v2beta1 REST API, for REST-client tests.

    with KFPStub(token="t") as stub:          # stub.host == "http://127.0.0.1:PORT"
        ...client uploads, creates a run...
        stub.fail_task(run_id, "train", "OOMKilled")   # the run's next progression fails "train"

Each rule names the kubeflow/pipelines file (tag 2.17.0, paths under backend/) that it mirrors.
JSON is protojson with proto names and no zero values (src/apiserver/common/utils.go
CustomMarshaler), so empty lists, "", 0, false and RUNTIME_STATE_UNSPECIFIED are *absent*.
Where the server is lax in a way that hides client bugs, strict=True (default) is stricter and
says "stub(strict)": it rejects a 5-field cron and a recurring run without trigger (both accepted
by the server); strict=False behaves like the server.  task_errors=True adds run/task `error`
{code: 2, message} for failed tasks, which the real 2.17 server never fills in.
stub.requests holds (method, path, query dict, body): body is the parsed JSON, the raw bytes if it
did not parse, or for uploads {"uploadfile": bytes, "filename": str} ({} if the part is missing).
Simplified: task_details has one entry per root-DAG task (the server lists every Argo node:
"<task>-driver", "<task>", "executor", "root", ...); one namespace; zip/tar uploads unsupported.
"""
import email.parser
import email.policy
import json
import re
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import yaml  # an ovpipe dependency already (pyproject.toml); pipeline specs are YAML

HTTP_STATUS = {3: 400, 5: 404, 6: 409, 10: 409, 13: 500, 16: 401}  # grpc-gateway HTTPStatusFromCode
NS = "kubeflow"  # POD_NAMESPACE: what single-user mode stores as a recurring run's namespace


class ApiError(Exception):
    """A gRPC status as grpc-gateway v2 writes it: {code, message, details} (no "error" key).
    src/common/util/error.go UserError.GRPCStatus: message is the wrapped internal chain,
    details[0] a google.rpc.Status carrying the short external message."""

    def __init__(self, code, message, external=None):
        super().__init__(message)
        self.code, self.message, self.external = code, message, external

    def body(self):
        out = {"code": self.code, "message": self.message}
        if self.external is not None:
            out["details"] = [{"@type": "type.googleapis.com/google.rpc.Status",
                               "code": self.code, "message": self.external}]
        return out


class UploadError(Exception):
    """Upload endpoints are plain HTTP handlers: src/apiserver/server/pipeline_upload_server.go
    writeErrorToResponse answers the v1beta1 Error {error_message, error_details}."""

    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


# Request message fields (api/v2beta1/*.proto).  protojson rejects any other field at any depth
# (CustomMarshaler DiscardUnknown: false) except inside google.protobuf.Struct values (None).
_REF = dict.fromkeys(["pipeline_id", "pipeline_version_id"])
_CFG = dict.fromkeys(["parameters", "pipeline_root"])
_TIMES = dict.fromkeys(["start_time", "end_time"])
_EXPERIMENT = dict.fromkeys("experiment_id display_name description created_at namespace "
                            "storage_state last_run_created_at".split())
_RUN = {**dict.fromkeys("experiment_id run_id display_name storage_state description "
                        "pipeline_version_id pipeline_spec service_account created_at scheduled_at "
                        "finished_at state error run_details recurring_run_id state_history "
                        "plugins_input plugins_output".split()),
        "pipeline_version_reference": _REF, "runtime_config": _CFG}
_RECURRING = {**dict.fromkeys("recurring_run_id display_name description pipeline_version_id "
                              "pipeline_spec service_account max_concurrency mode created_at "
                              "updated_at status error no_catchup namespace experiment_id "
                              "plugins_input".split()),
              "pipeline_version_reference": _REF, "runtime_config": _CFG,
              "trigger": {"cron_schedule": {**_TIMES, "cron": None},
                          "periodic_schedule": {**_TIMES, "interval_second": None}}}
# Filterable keys: the APIToModelFieldMap of src/apiserver/model/{pipeline,experiment,...}.go.
_KEYS = {resource: {"id": fields.split()[0], **aliases, **{k: k for k in fields.split()}}
         for resource, fields, aliases in [
             ("pipelines", "pipeline_id name display_name created_at description namespace", {}),
             ("pipeline_versions", "pipeline_version_id name display_name created_at description", {}),
             ("experiments", "experiment_id display_name created_at description namespace storage_state",
              {"name": "display_name"}),
             ("runs", "run_id display_name created_at finished_at description state experiment_id storage_state",
              {"name": "display_name"}),
             ("recurringRuns", "recurring_run_id display_name created_at updated_at description",
              {"name": "display_name"})]}
_OPS = ["OPERATION_UNSPECIFIED", "EQUALS", "NOT_EQUALS", "GREATER_THAN", "GREATER_THAN_EQUALS",
        "LESS_THAN", "LESS_THAN_EQUALS", "IN", "IS_SUBSTRING"]
_TESTS = {"EQUALS": lambda x, v, vs: x == v, "NOT_EQUALS": lambda x, v, vs: x != v,
          "GREATER_THAN": lambda x, v, vs: x > v, "GREATER_THAN_EQUALS": lambda x, v, vs: x >= v,
          "LESS_THAN": lambda x, v, vs: x < v, "LESS_THAN_EQUALS": lambda x, v, vs: x <= v,
          "IN": lambda x, v, vs: x in vs, "IS_SUBSTRING": lambda x, v, vs: v in x}
_PTYPES = {"NUMBER_DOUBLE": (int, float), "NUMBER_INTEGER": (int, float), "STRING": str,
           "BOOLEAN": bool, "LIST": list, "STRUCT": dict}


def _snake(key):
    return re.sub(r"[A-Z]", lambda m: "_" + m[0].lower(), key)


def _check(obj, schema, where="body"):
    """Normalise lowerCamel names to proto names (protojson accepts both); reject unknown ones."""
    if not isinstance(obj, dict):
        raise ApiError(3, f"proto: syntax error: {where} is not a JSON object")
    out = {}
    for key, value in obj.items():
        name = key if key in schema else _snake(key)
        if name not in schema:
            raise ApiError(3, f'proto: unknown field "{key}"')  # the server adds "(line L:C): "
        sub = schema[name]
        out[name] = _check(value, sub, name) if sub is not None and value is not None else value
    return out


def _compact(d):
    return {k: v for k, v in d.items() if v not in (None, "", 0, False, [], {})}


def _ts(sec):  # google.protobuf.Timestamp of whole seconds; never-set times are the epoch
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(sec))


def _bad_spec(external):
    """src/apiserver/template/template.go: NewInvalidInputErrorWithDetails(ErrorInvalidPipelineSpec, ...)."""
    return ApiError(3, f"InvalidInputError: {external}: pipeline spec is invalid", external)


def _pick_spec(docs):
    """src/apiserver/template/template.go New, v2_template.go NewV2SpecTemplate: exactly one YAML
    document with pipelineInfo.name and root, schemaVersion 2.1.0; "platforms" docs ride along."""
    specs = [d for d in docs if isinstance(d, dict) and isinstance(d.get("root"), dict)
             and isinstance(d.get("pipelineInfo"), dict) and d["pipelineInfo"].get("name")]
    if not specs:
        raise _bad_spec("unknown template format")
    if len(specs) > 1:
        raise _bad_spec("multiple pipeline specs provided")
    if specs[0].get("schemaVersion") != "2.1.0":
        raise _bad_spec("KFP only supports schema version 2.1.0, but the pipeline spec has "
                        f"version {specs[0].get('schemaVersion', '')}")
    return specs[0], [d for d in docs if isinstance(d, dict) and "platforms" in d]


def _spec_json(spec, platform):
    """src/apiserver/server/api_util.go YamlStringToPipelineSpecStruct: wrapped iff a platform spec."""
    return {"pipeline_spec": spec, "platform_spec": platform[0]} if platform else spec


def _tasks_of(spec):
    """Root-DAG tasks keyed by their task key, which is the Argo node's display name
    (src/v2/compiler/argocompiler/dag.go); upstreams = dependentTasks + producers of inputs
    (dag.go addImplicitDependencies); exit handlers run whatever their upstreams did."""
    tasks = {}
    for key, t in (((spec.get("root") or {}).get("dag") or {}).get("tasks") or {}).items():
        deps = set(t.get("dependentTasks") or [])
        for kind in ("parameters", "artifacts"):
            for inp in ((t.get("inputs") or {}).get(kind) or {}).values():
                for ref in ("taskOutputParameter", "taskOutputArtifact"):
                    deps.add(((inp or {}).get(ref) or {}).get("producerTask"))
        tasks[key] = {"deps": sorted(d for d in deps if d), "task_id": None, "state": None,
                      "start": 0, "end": 0, "attempts": 0, "retried": 0, "error": None,
                      "exit": (t.get("triggerPolicy") or {}).get("strategy") == "ALL_UPSTREAM_TASKS_COMPLETED",
                      "pod": f"{spec['pipelineInfo']['name']}-system-container-impl-{uuid.uuid4().int % 10**10}"}
    return tasks


def _topo(tasks):
    order = []
    def visit(name):
        if name in tasks and name not in order:
            for dep in tasks[name]["deps"]:
                visit(dep)
            order.append(name)
    for name in tasks:
        visit(name)
    return order


def _check_params(spec, params, prefix):
    """src/apiserver/template/v2_template.go validatePipelineJobInputs (messages abridged for types)."""
    defs = ((spec.get("root") or {}).get("inputDefinitions") or {}).get("parameters") or {}
    for name, d in defs.items():
        if name not in params:
            if not d.get("isOptional") and "defaultValue" not in d:
                msg = f"parameter {name} is not optional, yet has neither default value nor user provided value"
                raise ApiError(3, f"{prefix}: Invalid input error: {msg}", msg)
            continue
        want, v = _PTYPES.get(d.get("parameterType")), params[name]
        if want and (not isinstance(v, want) or (isinstance(v, bool) and want is not bool)):
            msg = f"input parameter {name} requires type {d['parameterType']}, but got {type(v).__name__}"
            raise ApiError(3, f"{prefix}: Invalid input error: {msg}", msg)
    if sorted(set(params) - set(defs)):
        msg = "parameter(s) provided are not required by pipeline: " + ", ".join(sorted(set(params) - set(defs)))
        raise ApiError(3, f"{prefix}: Invalid input error: {msg}", msg)


def _cron_error(cron, strict):
    """robfig/cron v1.2.0 Parse (src/apiserver/server/api_converter.go toModelJob): seconds first,
    5 or 6 fields (day-of-week optional) or a descriptor.  A 5-field Unix cron is accepted by the
    server but read as "sec min hour dom month", so strict mode rejects it."""
    fields = cron.split()
    if not cron:
        return "Empty spec string"
    if cron.startswith("@"):
        ok = cron in ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
        return None if ok or re.fullmatch(r"@every \S+", cron) else f"Unrecognized descriptor: {cron}"
    if not 5 <= len(fields) <= 6:
        return f"Expected 5 to 6 fields, found {len(fields)}: {cron}"
    if len(fields) == 5 and strict:
        return (f"stub(strict): 5 fields in {cron!r}; robfig/cron v1 reads the first as seconds, so "
                "the server would schedule it wrongly - send 6 fields (seconds first)")
    for field, (lo, hi) in zip(fields, [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)]):
        for n in re.split(r"[,/-]", field):  # names (JAN, MON) pass unchecked
            if n not in ("*", "?") and not n.isalpha() and not (n.isdigit() and lo <= int(n) <= hi):
                return f"Failed to parse {n!r} in {field!r} (range {lo}-{hi}): {cron}"
    return None


def _filter(items, raw, keys):
    """src/apiserver/server/list_request_util.go parseAPIFilter: the already-decoded value is
    URL-decoded once more ('+' becomes ' '), read as a v2beta1 Filter; unknown keys are errors."""
    if not raw:
        return items
    try:
        preds = json.loads(urllib.parse.unquote_plus(raw)).get("predicates") or []
    except (ValueError, AttributeError) as e:
        raise ApiError(3, f"Invalid input error: failed to parse valid filter from {raw!r}: {e}") from None
    for p in preds:
        p = {_snake(k): v for k, v in p.items()}
        if p.get("key") not in keys:
            msg = f"no support for filtering on unrecognized field {p.get('key')!r}"
            raise ApiError(3, f"Invalid input error: {msg}", msg)
        field, op = keys[p["key"]], p.get("operation")
        op = _OPS[op] if isinstance(op, int) else op
        val = str(next((p[k] for k in ("string_value", "int_value", "long_value", "timestamp_value") if k in p), ""))
        vals = [str(v) for k in ("string_values", "int_values", "long_values") if k in p
                for v in p[k].get("values", [])]
        if op not in _TESTS:
            raise ApiError(3, f"Invalid input error: invalid filter operation {op!r}")
        items = [i for i in items if _TESTS[op](str(i.get(field, "")), val, vals)]
    return items


class _Handler(BaseHTTPRequestHandler):
    stub = None

    def do_GET(self):
        self.stub._handle(self, "GET")

    def do_POST(self):
        self.stub._handle(self, "POST")

    def log_message(self, *args):
        pass


class KFPStub:
    """In-memory KFP API server.  Public: host, requests, fail_task(), tasks(), and the state dicts
    pipelines / versions / experiments / runs / recurring_runs (id -> record)."""

    ROUTES = [("GET", r"/apis/v2beta1/healthz", "_healthz"),
              ("POST", r"/apis/v2beta1/pipelines/upload", "_upload"),
              ("POST", r"/apis/v2beta1/pipelines/upload_version", "_upload_version"),
              ("GET", r"/apis/v2beta1/pipelines", "_list_pipelines"),
              ("GET", r"/apis/v2beta1/pipelines/(?P<pid>[^/]+)/versions", "_list_versions"),
              ("POST", r"/apis/v2beta1/experiments", "_create_experiment"),
              ("GET", r"/apis/v2beta1/experiments", "_list_experiments"),
              ("POST", r"/apis/v2beta1/runs", "_create_run"),
              ("GET", r"/apis/v2beta1/runs", "_list_runs"),
              ("GET", r"/apis/v2beta1/runs/(?P<rid>[^/:]+)", "_get_run"),
              ("POST", r"/apis/v2beta1/runs/(?P<rid>[^/:]+):retry", "_retry_run"),
              ("POST", r"/apis/v2beta1/recurringruns", "_create_recurring"),
              ("GET", r"/apis/v2beta1/recurringruns", "_list_recurring")]

    def __init__(self, token=None, *, strict=True, task_errors=False):
        self.token, self.strict, self.task_errors = token, strict, task_errors
        self.host, self.requests = None, []  # requests: (method, path, query dict, body)
        self.pipelines, self.versions, self.experiments, self.runs, self.recurring_runs = {}, {}, {}, {}, {}
        self._lock, self._last, self._failures, self._server = threading.RLock(), 0, {}, None
        # src/apiserver/main.go: single-user mode creates experiment "Default" at start-up.
        self._default = self._add_experiment(
            "Default", "All runs created without specifying an experiment will be grouped here.")

    def __enter__(self):
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (_Handler,), {"stub": self}))
        self._server.daemon_threads = True
        self.host = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    def fail_task(self, run_id, display_name, message="task failed"):
        """Make the run's next RUNNING -> finished progression fail `display_name` (KeyError if unknown)."""
        with self._lock:
            if display_name not in self.runs[run_id]["tasks"]:
                raise KeyError(f"run {run_id} has no task {display_name!r}")
            self._failures.setdefault(run_id, {})[display_name] = message

    def tasks(self, run_id):
        """{display_name: {task_id, state, attempts (times executed), retried (times re-run by a retry)}}."""
        with self._lock:
            return {n: {k: t[k] for k in ("task_id", "state", "attempts", "retried")}
                    for n, t in self.runs[run_id]["tasks"].items()}

    # -- plumbing ---------------------------------------------------------------------------
    def _now(self):  # whole seconds like the server, strictly increasing so re-runs are visible
        self._last = max(int(time.time()), self._last + 1)
        return self._last

    def _handle(self, h, method):
        url = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(url.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query, keep_blank_values=True).items()}
        raw = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        body, err, status, headers = None, None, 200, {}
        if path.startswith("/apis/v2beta1/pipelines/upload"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                b"Content-Type: " + h.headers.get("Content-Type", "").encode() + b"\r\n\r\n" + raw)
            body = next(({"uploadfile": p.get_payload(decode=True) or b"", "filename": p.get_filename() or ""}
                         for p in (msg.iter_parts() if msg.is_multipart() else ())
                         if p.get_param("name", header="content-disposition") == "uploadfile"), {})
        elif raw.strip():
            try:
                body = json.loads(raw)
            except ValueError as e:
                body, err = raw, ApiError(3, f"proto: syntax error: {e}")
        with self._lock:
            self.requests.append((method, path, query, body))
            try:
                if err:
                    raise err
                if self.token is not None and h.headers.get("Authorization") != f"Bearer {self.token}":
                    # src/apiserver/auth/auth.go IdentityHeaderMissingError (upload would say 400 there)
                    raise ApiError(16, "Unauthenticated: Request header error: there is no user identity header.",
                                   "Request header error: there is no user identity header.")
                for m, pattern, name in self.ROUTES:
                    match = re.fullmatch(pattern, path)
                    if m == method and match:
                        out = getattr(self, name)(query, body, **match.groupdict())
                        break
                else:
                    raise ApiError(5, "Not Found")
            except UploadError as e:
                status, out = e.status, {"error_message": str(e), "error_details": str(e)}
            except ApiError as e:
                status, out = HTTP_STATUS[e.code], e.body()
                if e.code == 16:
                    headers["WWW-Authenticate"] = e.message  # grpc-gateway DefaultHTTPErrorHandler
            except Exception as e:  # answer instead of dropping the connection
                status, out = 500, {"code": 13, "message": f"kfp_stub: unhandled {e!r}"}
        data = json.dumps(out, default=str).encode()
        h.send_response(status)
        for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **headers}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)

    def _page(self, key, items, q):
        """src/apiserver/server/list_request_util.go: page_size 0 -> 20, capped at 200."""
        items = _filter(items, q.get("filter"), _KEYS[key])
        start, size = int(q.get("page_token") or 0), min(int(q.get("page_size") or 20) or 20, 200)
        token = str(start + size) if start + size < len(items) else ""
        return _compact({key: items[start:start + size], "total_size": len(items), "next_page_token": token})

    # -- pipelines --------------------------------------------------------------------------
    def _read_upload(self, q, body, generic):
        """pipeline_upload_server.go + util.go ReadPipelineFile: .yaml/.yml/.json names only here."""
        if "uploadfile" not in (body or {}):
            raise UploadError(400, generic or "Failed to read pipeline from file")
        if not body["filename"].endswith((".yaml", ".yml", ".json")):
            raise UploadError(400, generic or "Failed to read a pipeline spec file")
        try:
            return _pick_spec([d for d in yaml.safe_load_all(body["uploadfile"]) if d is not None])
        except yaml.YAMLError as e:
            raise UploadError(400, f"failed to parse pipeline spec YAML: {e}") from None
        except ApiError as e:  # InvalidArgument -> 400 with the external message
            raise UploadError(400, e.external) from None

    def _add_version(self, pid, name, q, spec, platform):
        vid, now = str(uuid.uuid4()), self._now()
        self.versions[vid] = {"pipeline_id": pid, "pipeline_version_id": vid, "name": name,
                              "display_name": q.get("display_name") or name, "description": q.get("description", ""),
                              "created_at": now, "spec": spec, "platform": platform}
        return self.versions[vid]

    def _version_json(self, v):  # api_converter.go toApiPipelineVersion
        keep = ("pipeline_id", "pipeline_version_id", "name", "display_name", "description")
        return _compact({**{k: v[k] for k in keep}, "created_at": _ts(v["created_at"]),
                         "pipeline_spec": _spec_json(v["spec"], v["platform"])})

    def _pipeline_json(self, p):  # api_converter.go toApiPipeline
        return _compact({**p, "created_at": _ts(p["created_at"])})

    def _upload(self, q, body):
        spec, platform = self._read_upload(q, body, None)
        name = q.get("name") or q.get("display_name") or body["filename"]  # buildPipelineName
        if any(p["name"] == name and p["namespace"] == q.get("namespace", "") for p in self.pipelines.values()):
            raise UploadError(409, "Failed to create a pipeline and a pipeline version")
        pid = str(uuid.uuid4())
        self.pipelines[pid] = {"pipeline_id": pid, "name": name, "display_name": q.get("display_name") or name,
                               "description": q.get("description", ""), "created_at": self._now(),
                               "namespace": q.get("namespace", "")}
        self._add_version(pid, name, q, spec, platform)
        return self._pipeline_json(self.pipelines[pid])

    def _upload_version(self, q, body):
        generic = "Failed to create a pipeline version"  # every early failure says only this
        spec, platform = self._read_upload(q, body, generic)
        pid = q.get("pipelineid", "")
        if pid not in self.pipelines:
            raise UploadError(400, generic)
        name = q.get("name") or q.get("display_name") or body["filename"]
        if any(v["pipeline_id"] == pid and v["name"] == name for v in self.versions.values()):
            raise UploadError(409, generic)
        return self._version_json(self._add_version(pid, name, q, spec, platform))

    def _list_pipelines(self, q, body):
        return self._page("pipelines", [self._pipeline_json(p) for p in self.pipelines.values()], q)

    def _list_versions(self, q, body, pid):
        vs = [self._version_json(v) for v in self.versions.values() if v["pipeline_id"] == pid]
        return self._page("pipeline_versions", vs, q)

    # -- experiments ------------------------------------------------------------------------
    def _add_experiment(self, name, description="", namespace=""):
        eid = str(uuid.uuid4())
        self.experiments[eid] = {"experiment_id": eid, "display_name": name, "description": description,
                                 "namespace": namespace, "created_at": self._now(), "last_run_created_at": 0}
        return eid

    def _experiment_json(self, e):  # api_converter.go toApiExperiment
        return _compact({**e, "created_at": _ts(e["created_at"]), "storage_state": "AVAILABLE",
                         "last_run_created_at": _ts(e["last_run_created_at"])})

    def _create_experiment(self, q, body):
        e = _check(body or {}, _EXPERIMENT)
        name, ns = e.get("display_name", ""), e.get("namespace", "")
        if not name:  # api_converter.go toModelExperiment wraps this in an *internal* error
            raise ApiError(13, "[ExperimentServer]: Failed to create a experiment due to conversion error: "
                           "InternalServerError: Failed to convert API experiment to model experiment: "
                           "Invalid input error: Experiment must have a non-empty name", "Internal Server Error")
        if any(x["display_name"] == name and x["namespace"] == ns for x in self.experiments.values()):
            msg = f"Failed to create a new experiment. The name {name} already exists. Please specify a new name"
            # src/apiserver/storage/experiment_store.go: unique (name, namespace)
            raise ApiError(6, f"Failed to create a experiment: Already exist error: {msg}", msg)
        return self._experiment_json(self.experiments[self._add_experiment(name, e.get("description", ""), ns)])

    def _list_experiments(self, q, body):
        return self._page("experiments", [self._experiment_json(e) for e in self.experiments.values()], q)

    def _experiment_of(self, obj, prefix):
        """resource_manager.go GetValidExperimentNamespacePair: empty -> the Default experiment."""
        eid = obj.get("experiment_id") or self._default
        if eid not in self.experiments:
            raise ApiError(5, f"{prefix}: Failed to fetch namespace for experiment {eid}: "
                           f"ResourceNotFoundError: Experiment {eid} not found", f"Experiment {eid} not found")
        return eid

    def _source(self, obj, prefix, pin=True):
        """resource_manager.go fetchTemplateFromPipelineSpec: a version id, else the pipeline's
        latest version, else the inline pipeline_spec.  CreateRun/CreateJob wrap every error here
        in NewInternalServerError, so a bad id or a missing source is HTTP 500, not 400."""
        ref = obj.get("pipeline_version_reference") or {}
        pid, vid = ref.get("pipeline_id", ""), ref.get("pipeline_version_id", "")
        def fail(msg):
            raise ApiError(13, f"{prefix}: {msg}", "Internal Server Error")
        v = None
        if vid:
            v = self.versions.get(vid) or fail(f"ResourceNotFoundError: PipelineVersion {vid} not found")
            if pid and v["pipeline_id"] != pid:
                fail(f"Invalid input error: Pipeline version {vid} belongs to pipeline {v['pipeline_id']} (not {pid})")
        elif pid:
            vs = [x for x in self.versions.values() if x["pipeline_id"] == pid]
            v = vs[-1] if vs else fail(f"ResourceNotFoundError: Pipeline {pid} has no versions")
        if v:
            ids = {"pipeline_id": v["pipeline_id"]} | ({"pipeline_version_id": v["pipeline_version_id"]} if pin else {})
            return v["spec"], v["platform"], ids
        spec = obj.get("pipeline_spec")
        if not spec:
            fail("Invalid input error: Failed to fetch a template with an empty pipeline spec manifest")
        docs = [spec["pipeline_spec"], spec.get("platform_spec")] if "pipeline_spec" in spec else [spec]
        try:
            return (*_pick_spec([d for d in docs if d]), None)
        except ApiError as e:
            fail(e.message)

    # -- runs -------------------------------------------------------------------------------
    def _create_run(self, q, body):
        r, new = _check(body or {}, _RUN), "Failed to create a new run"
        if not r.get("display_name"):  # api_converter.go toModelRun: an *internal* error
            raise ApiError(13, "Failed to create a run due to conversion error: InternalServerError: Failed to convert "
                           "a API run detail to its internal representation: Invalid input error: Run name cannot be "
                           "empty", "Internal Server Error")
        eid = self._experiment_of(r, f"{new}: Failed to create a run due to invalid experimentId and namespace "
                                  "combination")
        spec, platform, ref = self._source(r, f"{new}: InternalServerError: Failed to create a run due to error "
                                           "fetching manifest")
        cfg = r.get("runtime_config") or {}
        _check_params(spec, cfg.get("parameters") or {}, f"{new}: Failed to generate the ExecutionSpec: invalid "
                      "pipeline job inputs")
        rid, now = str(uuid.uuid4()), self._now()
        self.runs[rid] = {"run_id": rid, "experiment_id": eid, "display_name": r["display_name"],
                          "description": r.get("description", ""),
                          "service_account": r.get("service_account") or "pipeline-runner",
                          "runtime_config": _compact({k: cfg.get(k) for k in ("parameters", "pipeline_root")}),
                          "ref": ref, "spec": spec, "platform": platform, "tasks": _tasks_of(spec), "error": None,
                          "created_at": now, "finished_at": 0, "state": "PENDING", "history": [(now, "PENDING")]}
        self.experiments[eid]["last_run_created_at"] = now  # experiment_store.go SetLastRunTimestamp
        return self._run_json(self.runs[rid])

    def _run_json(self, run):
        """api_converter.go toApiRun + toApiPipelineTaskDetail: no pod_name, and no error on a
        FAILED run or task (only conversion errors fill them) unless task_errors=True."""
        err = (lambda msg: {"code": 2, "message": msg} if self.task_errors and msg else None)
        tasks = [_compact({"run_id": run["run_id"], "task_id": t["task_id"], "display_name": name,
                           "create_time": _ts(run["created_at"]), "start_time": _ts(t["start"]),
                           "end_time": _ts(t["end"]), "state": t["state"], "child_tasks": [{"pod_name": t["pod"]}],
                           "error": err(t["error"])})
                 for name, t in run["tasks"].items() if t["task_id"]]
        keep = ("run_id", "experiment_id", "display_name", "description", "service_account", "state", "runtime_config")
        out = {k: run[k] for k in keep}
        out.update(storage_state="AVAILABLE", created_at=_ts(run["created_at"]), scheduled_at=_ts(run["created_at"]),
                   finished_at=_ts(run["finished_at"]), run_details={"task_details": tasks} if tasks else None,
                   state_history=[{"update_time": _ts(t), "state": s} for t, s in run["history"]],
                   error=err(run["error"]))
        if run["ref"]:
            out["pipeline_version_reference"] = run["ref"]
        else:
            out["pipeline_spec"] = _spec_json(run["spec"], run["platform"])
        return _compact(out)

    def _set_state(self, run, state, now):  # storage/run_store.go appends state_history on change
        run["state"] = state
        run["history"].append((now, state))

    def _advance(self, run):
        """One persistence-agent report per GET: PENDING -> RUNNING -> SUCCEEDED or FAILED."""
        now, tasks = self._now(), run["tasks"]
        if run["state"] == "PENDING":
            for t in tasks.values():
                if not t["exit"] and all(tasks[d]["state"] == "SUCCEEDED" for d in t["deps"] if d in tasks):
                    t.update(state="RUNNING", start=now, task_id=t["task_id"] or str(uuid.uuid4()))
            return self._set_state(run, "RUNNING", now)
        fails = self._failures.get(run["run_id"], {})
        for name in _topo(tasks):
            t = tasks[name]
            if t["state"] == "SUCCEEDED":
                continue  # carried forward by a retry (src/common/util/workflow.go GenerateRetryExecution)
            t["task_id"] = t["task_id"] or str(uuid.uuid4())  # task_store.go keeps ids per pod name
            if not t["exit"] and any(tasks[d]["state"] != "SUCCEEDED" for d in t["deps"] if d in tasks):
                # depends "<up>.Succeeded" is false: Argo marks the node Omitted, which
                # model/run.go RuntimeState.ToV2 maps to RUNTIME_STATE_UNSPECIFIED -> no "state" key
                t.update(state=None, start=now, end=now)
                continue
            if t["state"] != "RUNNING":
                t["start"] = now
            msg = fails.pop(name, None)
            t.update(state="SUCCEEDED" if msg is None else "FAILED", end=now, error=msg, attempts=t["attempts"] + 1)
        failed = [(n, t["error"]) for n, t in tasks.items() if t["state"] == "FAILED"]
        run["error"], run["finished_at"] = (f"task {failed[0][0]} failed: {failed[0][1]}" if failed else None), now
        self._set_state(run, "FAILED" if failed else "SUCCEEDED", now)

    def _get_run(self, q, body, rid):
        run = self._run(rid, "Failed to get a run")
        if run["state"] in ("PENDING", "RUNNING"):
            self._advance(run)
        return self._run_json(run)

    def _run(self, rid, prefix):
        if rid not in self.runs:
            raise ApiError(5, f"{prefix}: ResourceNotFoundError: Run {rid} not found", f"Run {rid} not found")
        return self.runs[rid]

    def _list_runs(self, q, body):  # listing does not advance runs
        runs = [self._run_json(r) for r in self.runs.values()
                if q.get("experiment_id") in (None, r["experiment_id"])]
        return self._page("runs", runs, q)

    def _retry_run(self, q, body, rid):
        """resource_manager.go RetryRun -> workflow.go GenerateRetryExecution: only a Failed/Error
        workflow; NewBadRequestError is gRPC ABORTED, i.e. HTTP 409.  Same run id, answer {};
        succeeded nodes are kept, failed and omitted ones run again; the run is RUNNING at once."""
        run = self._run(rid, f"Failed to retry a run: Failed to retry run {rid} due to error fetching the run")
        if run["state"] != "FAILED":
            raise ApiError(10, f"Failed to retry a run: Failed to retry run {rid}: BadRequestError: Workflow must be "
                           "Failed/Error to retry: workflow cannot be retried",
                           "Workflow must be Failed/Error to retry")
        now = self._now()
        for t in run["tasks"].values():
            if t["state"] == "FAILED":
                t.update(state="RUNNING", start=now, end=0, error=None, retried=t["retried"] + 1)
        run["finished_at"], run["error"] = 0, None
        self._set_state(run, "RUNNING", now)
        return {}

    # -- recurring runs ---------------------------------------------------------------------
    def _create_recurring(self, q, body):
        j, conv = _check(body or {}, _RECURRING), "Failed to create a recurring run due to conversion error"
        new = "Failed to create a recurring run"
        if not j.get("display_name"):  # api_converter.go toModelJob: an *internal* error
            raise ApiError(13, f"{conv}: InternalServerError: Failed to convert a API recurring run to its internal "
                           "representation: Invalid input error: Recurring run's name cannot be empty",
                           "Internal Server Error")
        trigger = j.get("trigger")
        if trigger is None and self.strict:  # the server accepts it: a schedule that never fires
            msg = "stub(strict): a recurring run needs a trigger"
            raise ApiError(3, f"{conv}: {msg}", msg)
        try:
            maxc = int(j.get("max_concurrency") or 0)
        except (TypeError, ValueError):
            msg = f"proto: invalid value for int64 field max_concurrency: {j['max_concurrency']!r}"
            raise ApiError(3, msg) from None
        checks = [(not 1 <= maxc <= 10,
                   f"Max concurrency of a recurring run must be at least 1 and at most 10. Received {maxc}")]
        if (trigger or {}).get("cron_schedule") is not None:
            err = _cron_error(trigger["cron_schedule"].get("cron", ""), self.strict)
            checks.append((err, "Schedule cron is not a supported format(https://godoc.org/github.com/robfig/cron). "
                                f"Error: {err}"))
        if (trigger or {}).get("periodic_schedule") is not None:
            n = int(trigger["periodic_schedule"].get("interval_second") or 0)
            checks.append((n < 1, f"Found invalid period schedule interval {n}. Set at interval to least 1 second"))
        for bad, msg in checks:
            if bad:
                raise ApiError(3, f"{conv}: Invalid input error: {msg}", msg)
        eid = self._experiment_of(j, f"{new}: {new} due to invalid experimentId and namespace combination")
        ref = j.get("pipeline_version_reference") or {}
        if not (ref.get("pipeline_version_id") or j.get("pipeline_spec") or ref.get("pipeline_id")):
            # resource_manager.go CreateJob: a plain error -> util.ToGRPCError "Internal error: ..."
            raise ApiError(13, f"Internal error: {new}: Cannot create a job with an empty pipeline ID")
        pinned = bool(ref.get("pipeline_version_id") or j.get("pipeline_spec"))  # else the latest version, per run
        spec, platform, ids = self._source(j, f"{new}: InternalServerError: {new} with an invalid pipeline spec "
                                           "manifest", pin=pinned)
        cfg = j.get("runtime_config") or {}
        _check_params(spec, cfg.get("parameters") or {}, f"{new}: invalid pipeline job inputs")
        jid, now, on = str(uuid.uuid4()), self._now(), j.get("mode") in ("ENABLE", 1)  # unset mode = DISABLED
        cron, per = (trigger or {}).get("cron_schedule") or {}, (trigger or {}).get("periodic_schedule") or {}
        out = _compact({  # api_converter.go toApiRecurringRun
            "recurring_run_id": jid, "display_name": j["display_name"], "description": j.get("description"),
            "service_account": j.get("service_account") or "pipeline-runner", "max_concurrency": str(maxc),
            "no_catchup": bool(j.get("no_catchup")), "mode": "ENABLE" if on else "DISABLE",
            "status": "ENABLED" if on else "DISABLED", "created_at": _ts(now), "updated_at": _ts(now),
            "namespace": NS, "experiment_id": eid,
            "runtime_config": _compact({k: cfg.get(k) for k in ("parameters", "pipeline_root")}),
            "pipeline_version_reference": ids, "pipeline_spec": None if ids else _spec_json(spec, platform)})
        if cron.get("cron"):  # api_converter.go toApiTrigger: a Trigger is always present, maybe {}
            out["trigger"] = {"cron_schedule": _compact(cron)}
        elif per.get("interval_second"):
            out["trigger"] = {"periodic_schedule": _compact({**per, "interval_second": str(per["interval_second"])})}
        else:
            out["trigger"] = {}
        self.recurring_runs[jid] = out
        return out

    def _list_recurring(self, q, body):  # the proto field really is camelCase: recurringRuns
        jobs = [j for j in self.recurring_runs.values() if q.get("experiment_id") in (None, j["experiment_id"])]
        return self._page("recurringRuns", jobs, q)

    def _healthz(self, q, body):  # src/apiserver/main.go healthzResponse (encoding/json, not protojson)
        return {"commit_sha": "unknown", "tag_name": "unknown", "multi_user": False, "pipeline_store": "database"}


if __name__ == "__main__":  # self-test: upload -> version -> experiment -> run -> fail -> retry
    import urllib.error
    import urllib.request

    SPEC = yaml.safe_dump({
        "pipelineInfo": {"name": "demo"}, "schemaVersion": "2.1.0", "sdkVersion": "kfp-2.17.0",
        "root": {"inputDefinitions": {"parameters": {"n": {"parameterType": "NUMBER_INTEGER", "defaultValue": 1}}},
                 "dag": {"tasks": {"prep": {"taskInfo": {"name": "prep"}},
                                   "train": {"taskInfo": {"name": "train"}, "dependentTasks": ["prep"]},
                                   "evaluate": {"taskInfo": {"name": "evaluate"}, "dependentTasks": ["train"]},
                                   "report": {"taskInfo": {"name": "report"}, "dependentTasks": ["prep"]}}}}}).encode()
    API = "/apis/v2beta1"

    def call(stub, method, path, body=None, upload=None, token="tok"):
        data, headers = None, {"Authorization": f"Bearer {token}"} if token else {}
        if upload is not None:
            data = (b'--B\r\nContent-Disposition: form-data; name="uploadfile"; filename="' + upload[0].encode()
                    + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + upload[1] + b"\r\n--B--\r\n")
            headers["Content-Type"] = "multipart/form-data; boundary=B"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        req = urllib.request.Request(stub.host + API + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with KFPStub(token="tok") as s:
        c = lambda *a, **k: call(s, *a, **k)
        assert c("GET", "/healthz", token=None)[0] == 401
        assert c("GET", "/healthz") == (200, {"commit_sha": "unknown", "tag_name": "unknown",
                                              "multi_user": False, "pipeline_store": "database"})
        assert c("POST", "/pipelines/upload?name=demo", upload=("p.txt", SPEC))[0] == 400
        st, bad = c("POST", "/pipelines/upload?name=demo", upload=("p.yaml", b"a: 1"))
        assert (st, bad["error_message"]) == (400, "unknown template format"), bad
        st, p = c("POST", "/pipelines/upload?name=demo&description=d", upload=("p.yaml", SPEC))
        assert st == 200 and p["name"] == p["display_name"] == "demo", p
        assert c("POST", "/pipelines/upload?name=demo", upload=("p.yaml", SPEC))[0] == 409
        pred = {"operation": "EQUALS", "key": "display_name", "string_value": "demo"}
        flt = urllib.parse.quote(json.dumps({"predicates": [pred]}))
        assert c("GET", f"/pipelines?filter={flt}")[1]["pipelines"][0]["pipeline_id"] == p["pipeline_id"]
        assert c("GET", "/pipelines?filter=" + flt.replace("demo", "nope"))[1] == {}
        st, v = c("POST", f"/pipelines/upload_version?pipelineid={p['pipeline_id']}&name=v2", upload=("p.yaml", SPEC))
        assert st == 200 and v["pipeline_spec"]["pipelineInfo"]["name"] == "demo", v
        assert c("GET", f"/pipelines/{p['pipeline_id']}/versions")[1]["total_size"] == 2
        st, e = c("POST", "/experiments", {"display_name": "exp"})
        assert st == 200 and e["storage_state"] == "AVAILABLE", e
        st, dup = c("POST", "/experiments", {"displayName": "exp"})
        assert st == 409 and dup["code"] == 6, dup
        ref = {"pipeline_id": p["pipeline_id"], "pipeline_version_id": v["pipeline_version_id"]}
        run_body = {"display_name": "r1", "experiment_id": e["experiment_id"], "pipeline_version_reference": ref,
                    "runtime_config": {"parameters": {"n": 3}, "pipeline_root": "gs://b/root"}, "service_account": "sa"}
        assert c("POST", "/runs", {**run_body, "bogus": 1})[1]["code"] == 3
        assert c("POST", "/runs", {"display_name": "r0"})[0] == 500  # no pipeline source
        assert c("POST", "/runs", {**run_body, "runtime_config": {"parameters": {"m": 1}}})[0] == 400
        st, run = c("POST", "/runs", run_body)
        assert st == 200 and run["state"] == "PENDING" and "run_details" not in run, run
        rid = run["run_id"]
        s.fail_task(rid, "train", "OOMKilled")
        assert c("GET", f"/runs/{rid}")[1]["state"] == "RUNNING"
        got = c("GET", f"/runs/{rid}")[1]
        tasks = {t["display_name"]: t for t in got["run_details"]["task_details"]}
        assert got["state"] == "FAILED" and "error" not in got, got
        assert {n: t.get("state") for n, t in tasks.items()} == {
            "prep": "SUCCEEDED", "train": "FAILED", "evaluate": None, "report": "SUCCEEDED"}, tasks
        assert c("POST", f"/runs/{rid}:retry") == (200, {})
        assert c("POST", f"/runs/{rid}:retry")[0] == 409  # RUNNING now
        done = c("GET", f"/runs/{rid}")[1]
        after = {t["display_name"]: t for t in done["run_details"]["task_details"]}
        assert done["run_id"] == rid and done["state"] == "SUCCEEDED", done
        assert all(t["state"] == "SUCCEEDED" for t in after.values()), after
        assert all(after[n]["task_id"] == tasks[n]["task_id"] for n in tasks)
        assert after["prep"]["start_time"] == tasks["prep"]["start_time"] != after["train"]["start_time"]
        assert {n: t["retried"] for n, t in s.tasks(rid).items()} == {"prep": 0, "train": 1, "evaluate": 0, "report": 0}
        st, conflict = c("POST", f"/runs/{rid}:retry")
        assert st == 409 and conflict["details"][0]["message"] == "Workflow must be Failed/Error to retry", conflict
        rr = {"display_name": "nightly", "experiment_id": e["experiment_id"], "pipeline_version_reference": ref,
              "max_concurrency": "1", "mode": "ENABLE", "no_catchup": True,
              "trigger": {"cron_schedule": {"cron": "0 0 2 * * *"}}}
        assert c("POST", "/recurringruns", {**rr, "trigger": {"cron_schedule": {"cron": "0 2 * * *"}}})[0] == 400
        assert c("POST", "/recurringruns", {k: x for k, x in rr.items() if k != "trigger"})[0] == 400
        assert c("POST", "/recurringruns", {**rr, "max_concurrency": "0"})[0] == 400
        st, job = c("POST", "/recurringruns", rr)
        assert st == 200 and job["status"] == "ENABLED" and job["max_concurrency"] == "1", job
        assert job["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}, job
        listed = c("GET", "/recurringruns")[1]
        assert [j["recurring_run_id"] for j in listed["recurringRuns"]] == [job["recurring_run_id"]], listed
        assert len(s.requests) > 20 and s.requests[3][3]["filename"] == "p.yaml"
    print("kfp_stub self-test passed")
