"""identity_multi: every <TYPE>_IN comes back as <TYPE>_OUT (FP32, FP16, BF16, INT64, BOOL, BYTES)."""

import triton_python_backend_utils as pb_utils

NAMES = ("FP32", "FP16", "BF16", "INT64", "BOOL", "BYTES")


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            outputs = []
            for name in NAMES:
                tensor = pb_utils.get_input_tensor_by_name(request, f"{name}_IN")
                if name == "BF16":  # numpy has no bfloat16: pass the buffer through DLPack
                    outputs.append(pb_utils.Tensor.from_dlpack(f"{name}_OUT", tensor.to_dlpack()))
                else:
                    outputs.append(pb_utils.Tensor(f"{name}_OUT", tensor.as_numpy()))
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
