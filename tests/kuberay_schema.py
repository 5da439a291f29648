"""Hand-written JSON Schemas (draft 2020-12) for a SUBSET of KubeRay's RayService and RayJob CRDs.

Source read: ray-project/kuberay, tag v1.7.0, commit 59d663aeec13760646da3db9c1cf8cfe883e30b7
("yaml: bump to 1.7.0 (#5176)"; helm chart version 1.7.0), files
  helm-chart/kuberay-operator/crds/ray.io_rayservices.yaml
  helm-chart/kuberay-operator/crds/ray.io_rayjobs.yaml
(byte-identical to ray-operator/config/crd/bases/ray.io_{rayservices,rayjobs}.yaml at that tag),
schema = spec.versions[name=v1].schema.openAPIV3Schema (v1 is served+storage; v1alpha1 is served, not storage).
Go types cross-checked in ray-operator/apis/ray/v1/{raycluster,rayservice,rayjob}_types.go and operator-side
checks in ray-operator/controllers/ray/utils/validation.go at the same tag.
The CRDs are generated with crd:maxDescLen=0, so they carry no descriptions.

Conventions
  * Every object we define has additionalProperties: false -> any field outside this subset is refused,
    even if the real CRD would accept it (e.g. imagePullPolicy, volumes, autoscalerOptions ...).
  * "CRD:" comments quote the CRD's type/format/default/enum/required at that path.
  * format int32/int64 are encoded as integer with min/max bounds (the API server checks these formats).
  * Places where this subset is STRICTER than the CRD are marked "TIGHTENED:".
  * The pod template in the CRD is a fully specified corev1.PodTemplateSpec schema (no
    x-kubernetes-preserve-unknown-fields anywhere in either CRD file); the subset below is a slice of it.
"""

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _int32(**extra):
    # CRD: {type: integer, format: int32}
    return {"type": "integer", "format": "int32", "minimum": INT32_MIN, "maximum": INT32_MAX, **extra}


def _int64(**extra):
    # CRD: {type: integer, format: int64}
    return {"type": "integer", "format": "int64", "minimum": INT64_MIN, "maximum": INT64_MAX, **extra}


def _obj(properties, required=()):
    s = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        s["required"] = list(required)
    return s


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

# CRD resources.limits / resources.requests additionalProperties (k8s resource.Quantity):
#   anyOf [integer, string], x-kubernetes-int-or-string: true, pattern below (applies to strings only).
_QUANTITY = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$",
}

# CRD: probe port in httpGet/tcpSocket: anyOf [integer, string], x-kubernetes-int-or-string: true
_INT_OR_STRING = {"anyOf": [{"type": "integer"}, {"type": "string"}]}

DEFS = {
    # ---------------- metadata (top-level) ----------------
    # CRD: metadata is just {type: object} (no properties, no required). name is required by the
    # Kubernetes API itself (name or generateName); TIGHTENED: we require name and allow only these keys.
    # Operator (validation.go) additionally requires a DNS-1035 label name (RayJob/RayService max length
    # enforced by the operator too, MaxRayJobNameLength / MaxRayServiceNameLength).
    "ObjectMeta": _obj(
        {
            "name": {"type": "string", "minLength": 1},
            "namespace": {"type": "string"},
            "labels": _STRING_MAP,
            "annotations": _STRING_MAP,
        },
        required=["name"],
    ),
    # ---------------- pod template (corev1.PodTemplateSpec subset) ----------------
    # CRD: template.metadata {type: object} with properties annotations, finalizers, labels, name, namespace
    # (generateEmbeddedObjectMeta=true). Subset: labels, annotations.
    "TemplateMeta": _obj({"labels": _STRING_MAP, "annotations": _STRING_MAP}),
    # CRD: containers[].ports[] {required: [containerPort]}; list-map keys [containerPort, protocol]
    "ContainerPort": _obj(
        {
            "containerPort": _int32(),  # CRD: integer int32, REQUIRED
            "name": {"type": "string"},  # CRD: string
        },
        required=["containerPort"],
    ),
    # CRD: containers[].env[] {required: [name]}; list-map key [name]
    "EnvVar": _obj(
        {
            "name": {"type": "string"},  # CRD: string, REQUIRED
            "value": {"type": "string"},  # CRD: string (must be a string; YAML numbers/bools need quoting)
        },
        required=["name"],
    ),
    # CRD: containers[].resources {type: object}, properties claims, limits, requests
    "ResourceRequirements": _obj(
        {
            "limits": {"type": "object", "additionalProperties": _QUANTITY},  # CRD: map -> Quantity
            "requests": {"type": "object", "additionalProperties": _QUANTITY},  # CRD: map -> Quantity
        }
    ),
    # CRD: readinessProbe/livenessProbe {type: object}, 10 properties (all 10 included here)
    "Probe": _obj(
        {
            "exec": _obj({"command": {"type": "array", "items": {"type": "string"}}}),  # CRD: object
            "httpGet": _obj(  # CRD: {required: [port]}
                {
                    "host": {"type": "string"},
                    "httpHeaders": {  # CRD: array of {name, value} both required
                        "type": "array",
                        "items": _obj({"name": {"type": "string"}, "value": {"type": "string"}},
                                      required=["name", "value"]),
                    },
                    "path": {"type": "string"},
                    "port": _INT_OR_STRING,  # CRD: int-or-string, REQUIRED
                    "scheme": {"type": "string"},  # CRD: string (no enum)
                },
                required=["port"],
            ),
            "tcpSocket": _obj({"host": {"type": "string"}, "port": _INT_OR_STRING}, required=["port"]),
            "grpc": _obj({"port": _int32(), "service": {"type": "string", "default": ""}}, required=["port"]),  # CRD: port int32 REQUIRED, service default ""
            "initialDelaySeconds": _int32(),  # CRD: integer int32
            "periodSeconds": _int32(),  # CRD: integer int32
            "timeoutSeconds": _int32(),  # CRD: integer int32
            "successThreshold": _int32(),  # CRD: integer int32
            "failureThreshold": _int32(),  # CRD: integer int32
            "terminationGracePeriodSeconds": _int64(),  # CRD: integer int64
        }
    ),
    # CRD: containers[].securityContext {type: object}, 12 properties. Subset omits
    # appArmorProfile, procMount, seLinuxOptions, windowsOptions.
    "SecurityContext": _obj(
        {
            "allowPrivilegeEscalation": {"type": "boolean"},
            "capabilities": _obj(
                {
                    "add": {"type": "array", "items": {"type": "string"}},
                    "drop": {"type": "array", "items": {"type": "string"}},
                }
            ),
            "privileged": {"type": "boolean"},
            "readOnlyRootFilesystem": {"type": "boolean"},
            "runAsGroup": _int64(),  # CRD: integer int64
            "runAsNonRoot": {"type": "boolean"},
            "runAsUser": _int64(),  # CRD: integer int64
            "seccompProfile": _obj(  # CRD: {required: [type]}, type is a plain string (no enum)
                {"type": {"type": "string"}, "localhostProfile": {"type": "string"}}, required=["type"]
            ),
        }
    ),
    # CRD: template.spec.containers[] {required: [name]}; list-map key [name].
    # NOTE: image is NOT required by the CRD (corev1.Container.image is optional in the API schema).
    "Container": _obj(
        {
            "name": {"type": "string"},  # CRD: string, REQUIRED
            "image": {"type": "string"},  # CRD: string, optional
            "ports": {"type": "array", "items": {"$ref": "#/$defs/ContainerPort"}},
            "resources": {"$ref": "#/$defs/ResourceRequirements"},
            "env": {"type": "array", "items": {"$ref": "#/$defs/EnvVar"}},
            "readinessProbe": {"$ref": "#/$defs/Probe"},
            "livenessProbe": {"$ref": "#/$defs/Probe"},
            "securityContext": {"$ref": "#/$defs/SecurityContext"},
        },
        required=["name"],
    ),
    # CRD: template.spec {required: [containers]}, 42 properties; subset: containers only.
    # Operator also rejects an empty containers list (validation.go: len(...Containers) == 0);
    # the Ray container is containers[0] (RayContainerIndex).
    "PodSpec": _obj(
        {"containers": {"type": "array", "minItems": 1, "items": {"$ref": "#/$defs/Container"}}},
        required=["containers"],
    ),
    # CRD: headGroupSpec.template / workerGroupSpecs[].template {type: object}, properties metadata, spec
    # (no required list at this level).  TIGHTENED: spec required here (operator needs containers).
    "PodTemplateSpec": _obj(
        {"metadata": {"$ref": "#/$defs/TemplateMeta"}, "spec": {"$ref": "#/$defs/PodSpec"}},
        required=["spec"],
    ),
    # ---------------- RayClusterSpec ----------------
    # CRD: headGroupSpec {required: [template]} (rayStartParams was also required up to v1.3.x; not in v1.4+)
    "HeadGroupSpec": _obj(
        {
            # CRD: {type: object, additionalProperties: {type: string}} -> values MUST be strings
            # (e.g. num-cpus: "0", dashboard-host: "0.0.0.0"); optional.
            "rayStartParams": _STRING_MAP,
            "template": {"$ref": "#/$defs/PodTemplateSpec"},  # CRD: REQUIRED
        },
        required=["template"],
    ),
    # CRD: workerGroupSpecs[] {required: [groupName, maxReplicas, minReplicas, template]}
    # NOTE: minReplicas (default 0) and maxReplicas (default 2147483647) are in the CRD's required list but
    # also carry defaults, which the API server applies before validation -> kubectl apply accepts
    # manifests that omit them. We follow the CRD's required list literally.
    "WorkerGroupSpec": _obj(
        {
            "groupName": {"type": "string"},  # CRD: string, REQUIRED
            "replicas": _int32(default=0),  # CRD: integer int32, default 0, optional
            "minReplicas": _int32(default=0),  # CRD: integer int32, default 0, REQUIRED
            "maxReplicas": _int32(default=INT32_MAX),  # CRD: integer int32, default 2147483647, REQUIRED
            "rayStartParams": _STRING_MAP,  # CRD: map string->string, optional (required up to v1.3.x)
            "template": {"$ref": "#/$defs/PodTemplateSpec"},  # CRD: REQUIRED
        },
        # Operator (not CRD): min/max must be >= 0 and minReplicas <= maxReplicas.
        required=["groupName", "maxReplicas", "minReplicas", "template"],
    ),
    # CRD: rayClusterConfig (RayService) / rayClusterSpec (RayJob): identical schemas,
    # {type: object, required: [headGroupSpec]}, 14 properties.
    "RayClusterSpec": _obj(
        {
            # CRD: string, optional (Go: +optional). Operator needs it only for authOptions token mode
            # (>= 2.52.0); KubeRay uses it to pick the submitter Job command.
            "rayVersion": {"type": "string"},
            "headGroupSpec": {"$ref": "#/$defs/HeadGroupSpec"},  # CRD: REQUIRED
            "workerGroupSpecs": {"type": "array", "items": {"$ref": "#/$defs/WorkerGroupSpec"}},  # CRD: array, optional
        },
        required=["headGroupSpec"],
    ),
}

# ---------------- RayService ----------------
# CRD top level: {type: object}, properties apiVersion (string), kind (string), metadata (object), spec, status.
# TIGHTENED: apiVersion/kind are consts and apiVersion/kind/metadata/spec required; status refused.
def _resource(kind: str, spec: dict) -> dict:
    """A whole manifest of `kind`: apiVersion, kind, metadata and its `spec` schema."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:kuberay:v1.7.0:subset:{kind}",
        "title": f"{kind} (ray.io/v1) subset, KubeRay v1.7.0",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind},
                       "metadata": {"$ref": "#/$defs/ObjectMeta"}, "spec": spec},
        "$defs": DEFS,
    }


RAYSERVICE_SCHEMA = _resource(
        "RayService",
        # CRD: spec {type: object, required: [rayClusterConfig]}
        _obj(
            {
                # CRD: string, optional. Go: "should be a YAML multi-line scalar string" (Serve config).
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": {"$ref": "#/$defs/RayClusterSpec"},  # CRD: REQUIRED
                # CRD: integer int32, optional. Present in v1.7.0 but Deprecated in Go:
                # "This field is not used anymore" (kuberay#1685). Accepted, has no effect.
                "serviceUnhealthySecondThreshold": _int32(),
                "deploymentUnhealthySecondThreshold": _int32(),  # same as above (deprecated, no effect)
            },
            required=["rayClusterConfig"],
        ),
)

# ---------------- RayJob ----------------
# CRD: spec {type: object}, NO required list (entrypoint was required only in v1.1.x).
RAYJOB_SUBMISSION_MODES = ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]

RAYJOB_SCHEMA = _resource(
        "RayJob",
        _obj(
            {
                "entrypoint": {"type": "string"},  # CRD: string, optional
                # CRD: string, optional. Operator checks it parses as YAML (UnmarshalRuntimeEnvYAML).
                "runtimeEnvYAML": {"type": "string"},
                "shutdownAfterJobFinishes": {"type": "boolean"},  # CRD: boolean, optional
                # CRD: integer int32, default 0, optional. Operator: must be >= 0; only effective when
                # shutdownAfterJobFinishes is true; TTL > 0 requires shutdownAfterJobFinishes=true.
                "ttlSecondsAfterFinished": _int32(default=0),
                # CRD: {type: string, default: K8sJobMode} -- NO enum in the CRD.
                # TIGHTENED: enum = Go constants JobSubmissionMode (rayjob_types.go).
                "submissionMode": {"type": "string", "default": "K8sJobMode", "enum": RAYJOB_SUBMISSION_MODES},
                # CRD: optional. TIGHTENED: required here, because the operator requires rayClusterSpec
                # or clusterSelector, and clusterSelector is outside this subset.
                "rayClusterSpec": {"$ref": "#/$defs/RayClusterSpec"},
                # CRD: integer int32, optional. Operator: must be > 0.
                "activeDeadlineSeconds": _int32(),
                # CRD: integer int32, default 0, optional. Operator: must be >= 0; > 0 is
                # incompatible with InteractiveMode and with clusterSelector. Each retry = new RayCluster.
                "backoffLimit": _int32(default=0),
            },
            required=["rayClusterSpec"],
        ),
)

__all__ = ["RAYSERVICE_SCHEMA", "RAYJOB_SCHEMA", "RAYJOB_SUBMISSION_MODES"]
