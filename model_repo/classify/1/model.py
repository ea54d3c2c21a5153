"""classify: INPUT0 (FP32 [batch, n]) comes back as each output's type, for the classification extension."""

import numpy as np
import triton_python_backend_utils as pb_utils

OUTPUTS = {
    "FP32": np.float32,
    "INT32": np.int32,
    "FP32_LABELLED": np.float32,
    "INT32_LABELLED": np.int32,
    "FP16": np.float16,
}


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            outputs = [pb_utils.Tensor(name, values.astype(kind)) for name, kind in OUTPUTS.items()]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
