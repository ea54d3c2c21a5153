"""validate_request with the plugin table: carried datatypes accepted, real mismatches in Triton's wording."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from tritonclient.grpc import model_config_pb2, service_pb2

from dynamo_triton import hookimpl
from dynamo_triton.dtypes import DType, DTypeTable, default_table
from dynamo_triton.errors import InvalidRequestError
from dynamo_triton.plugins import make_plugin_manager
from dynamo_triton.runtime.validation import spec_for, validate_request

FP8 = np.dtype(ml_dtypes.float8_e4m3fn)


class Fp8Plugin:
    @hookimpl
    def dyntriton_register_dtypes(self, register: object) -> None:
        register("FP8E4M3", DType("FP8E4M3", FP8, "TYPE_UINT8", "Float8E4M3", 1, None, carrier="UINT8"))  # type: ignore[operator]


@pytest.fixture(scope="module")
def table() -> DTypeTable:
    return make_plugin_manager(entry_points=False, plugins=[("fp8", Fp8Plugin())]).dtype_table()


def config(data_type: int = model_config_pb2.TYPE_UINT8) -> model_config_pb2.ModelConfig:
    config = model_config_pb2.ModelConfig(name="m")
    config.input.add(name="IN", data_type=data_type, dims=[-1])
    config.output.add(name="OUT", data_type=data_type, dims=[-1])
    return config


def request(datatype: str, raw: bytes, count: int | None = None) -> service_pb2.ModelInferRequest:
    message = service_pb2.ModelInferRequest(model_name="m")
    message.inputs.add(name="IN", datatype=datatype, shape=[len(raw) if count is None else count])
    message.raw_input_contents.append(raw)
    return message


def rejected(message: service_pb2.ModelInferRequest, model: model_config_pb2.ModelConfig, **kw: object) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        validate_request(message, model, **kw)  # type: ignore[arg-type]
    assert caught.value.status == "INVALID_ARGUMENT"
    return str(caught.value)


def test_a_carried_datatype_is_accepted_for_its_carriers_input(table: DTypeTable) -> None:
    raw = np.array([0.5, -2.0, 448.0], dtype=FP8).tobytes()
    validate_request(request("FP8E4M3", raw), config(), table=table)
    validate_request(request("UINT8", raw), config(), table=table)


def test_without_the_plugin_the_datatype_is_unknown_and_the_known_ones_are_listed() -> None:
    message = rejected(request("FP8E4M3", b"\0\0"), config())
    assert message.startswith("inference input 'IN': unknown datatype 'FP8E4M3'; available: BF16, BOOL, BYTES")
    assert "UINT8" in message and "DYNTRITON_PLUGINS" in message


def test_same_itemsize_without_carrying_keeps_tritons_wording(table: DTypeTable) -> None:
    message = rejected(request("FP8E4M3", b"\0\0"), config(model_config_pb2.TYPE_INT8), table=table)
    assert message == "inference input 'IN' data-type is 'FP8E4M3', but model 'm' expects 'INT8'"
    message = rejected(request("FP16", b"\0\0", count=1), config(), table=table)
    assert message == "inference input 'IN' data-type is 'FP16', but model 'm' expects 'UINT8'"


def test_a_carried_tensor_is_sized_by_its_own_itemsize(table: DTypeTable) -> None:
    message = rejected(request("FP8E4M3", b"\0\0\0", count=2), config(), table=table)
    assert message == "input byte size mismatch for input 'IN' for model 'm'. Expected 2, got 3"


def test_typed_contents_of_a_raw_only_plugin_datatype_are_refused(table: DTypeTable) -> None:
    message = service_pb2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="IN", datatype="FP8E4M3", shape=[2])
    tensor.contents.uint_contents.extend([1, 2])
    text = rejected(message, config(), table=table)
    assert "is FP8E4M3, which has no typed contents field: send it in raw_input_contents" in text


def test_specs_are_cached_per_config_and_table(table: DTypeTable) -> None:
    model = config()
    assert spec_for(model, table=table) is spec_for(model, table=table)
    assert spec_for(model) is spec_for(model, table=default_table())
    assert spec_for(model).inputs["IN"].kserve == spec_for(model, table=table).inputs["IN"].kserve == "UINT8"
