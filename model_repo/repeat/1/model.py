"""repeat (decoupled): one response per element of IN (OUT = element, IDX = position), then the final flag.

DELAY_MS (optional) waits between responses; a cancelled request stops early.
"""

import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            values = pb_utils.get_input_tensor_by_name(request, "IN").as_numpy()
            delay = pb_utils.get_input_tensor_by_name(request, "DELAY_MS")
            delay_s = float(delay.as_numpy()[0]) / 1000 if delay is not None else 0.0
            for index, value in enumerate(values.reshape(-1)):
                if request.is_cancelled():
                    break
                if delay_s:
                    time.sleep(delay_s)
                out = pb_utils.Tensor("OUT", np.array([value], dtype=np.int32))
                idx = pb_utils.Tensor("IDX", np.array([index], dtype=np.uint32))
                sender.send(pb_utils.InferenceResponse([out, idx]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None
