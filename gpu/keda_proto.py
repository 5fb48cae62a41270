"""KEDA's external scaler interface as protobuf message classes, built at import.

Written from KEDA's published definition (kedacore/keda,
``pkg/scalers/externalscaler/externalscaler.proto``): package
``externalscaler``, service ``ExternalScaler``, the same message names, field
names, numbers and types, so the wire format is KEDA's. The descriptors are
built here rather than generated, so installing needs no protobuf compiler.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "externalscaler"
SERVICE = f"{PACKAGE}.ExternalScaler"

_F = descriptor_pb2.FieldDescriptorProto
_STRING, _BOOL, _INT64, _DOUBLE, _MESSAGE = _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_INT64, _F.TYPE_DOUBLE, _F.TYPE_MESSAGE
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

#: message -> [(field, number, type, label, message type or None)], as in externalscaler.proto
_MESSAGES: dict[str, list[tuple[str, int, int, int, str | None]]] = {
    "ScaledObjectRef": [("name", 1, _STRING, _OPTIONAL, None), ("namespace", 2, _STRING, _OPTIONAL, None),
                        ("scalerMetadata", 3, _MESSAGE, _REPEATED, "ScaledObjectRef.ScalerMetadataEntry")],
    "IsActiveResponse": [("result", 1, _BOOL, _OPTIONAL, None)],
    "GetMetricSpecResponse": [("metricSpecs", 1, _MESSAGE, _REPEATED, "MetricSpec")],
    "MetricSpec": [("metricName", 1, _STRING, _OPTIONAL, None), ("targetSize", 2, _INT64, _OPTIONAL, None),
                   ("targetSizeFloat", 3, _DOUBLE, _OPTIONAL, None)],
    "GetMetricsRequest": [("scaledObjectRef", 1, _MESSAGE, _OPTIONAL, "ScaledObjectRef"),
                          ("metricName", 2, _STRING, _OPTIONAL, None)],
    "GetMetricsResponse": [("metricValues", 1, _MESSAGE, _REPEATED, "MetricValue")],
    "MetricValue": [("metricName", 1, _STRING, _OPTIONAL, None), ("metricValue", 2, _INT64, _OPTIONAL, None),
                    ("metricValueFloat", 3, _DOUBLE, _OPTIONAL, None)],
}

#: rpc -> (request, response, server streaming)
METHODS: dict[str, tuple[str, str, bool]] = {
    "IsActive": ("ScaledObjectRef", "IsActiveResponse", False),
    "StreamIsActive": ("ScaledObjectRef", "IsActiveResponse", True),
    "GetMetricSpec": ("ScaledObjectRef", "GetMetricSpecResponse", False),
    "GetMetrics": ("GetMetricsRequest", "GetMetricsResponse", False),
    "StreamMetricSpec": ("ScaledObjectRef", "GetMetricSpecResponse", True),
}


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, label: int,
           type_name: str | None) -> None:
    field = message.field.add(name=name, number=number, type=kind, label=label, json_name=name)
    if type_name is not None:
        field.type_name = f".{PACKAGE}.{type_name}"


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(name="externalscaler.proto", package=PACKAGE, syntax="proto3")
    for name, fields in _MESSAGES.items():
        message = proto.message_type.add(name=name)
        for field in fields:
            _field(message, *field)
        if name == "ScaledObjectRef":  # map<string, string> scalerMetadata = 3
            entry = message.nested_type.add(name="ScalerMetadataEntry")
            entry.options.map_entry = True
            _field(entry, "key", 1, _STRING, _OPTIONAL, None)
            _field(entry, "value", 2, _STRING, _OPTIONAL, None)
    service = proto.service.add(name="ExternalScaler")
    for rpc, (request, response, streaming) in METHODS.items():
        service.method.add(name=rpc, input_type=f".{PACKAGE}.{request}", output_type=f".{PACKAGE}.{response}",
                           server_streaming=streaming)
    return proto


_pool = descriptor_pool.DescriptorPool()
_pool.Add(_file())


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(_pool.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ScaledObjectRef = _message("ScaledObjectRef")
IsActiveResponse = _message("IsActiveResponse")
GetMetricSpecResponse = _message("GetMetricSpecResponse")
MetricSpec = _message("MetricSpec")
GetMetricsRequest = _message("GetMetricsRequest")
GetMetricsResponse = _message("GetMetricsResponse")
MetricValue = _message("MetricValue")
