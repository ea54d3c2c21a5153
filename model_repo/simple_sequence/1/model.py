"""simple_sequence: the contract of Triton's example stateful model, plus a running sum.

Triton's sequence batcher adds the control inputs START, READY and END ([batch, 1] INT32)
to every request of a sequence. For each request:

- ``OUTPUT`` = ``INPUT + START`` when READY, else 0: what Triton's ``simple_sequence``
  example model answers and its example clients check;
- ``SUM`` = the sum of ``INPUT`` over the sequence so far (START resets it), kept in
  this model instance per correlation id: a request that reaches an instance other
  than the one that saw its START gets a wrong ``SUM``, so tests see misrouting.

State ends with END; at most ``MAX_SEQUENCES`` sums are kept (oldest dropped first),
since a sequence Triton abandons for idleness never sends END.
"""

from collections import OrderedDict

import numpy as np
import triton_python_backend_utils as pb_utils

MAX_SEQUENCES = 4096


class TritonPythonModel:
    def initialize(self, args):
        self.sums = OrderedDict()

    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy().astype(np.int32)
            start = pb_utils.get_input_tensor_by_name(request, "START").as_numpy().astype(np.int32)
            ready = pb_utils.get_input_tensor_by_name(request, "READY").as_numpy().astype(np.int32)
            end = pb_utils.get_input_tensor_by_name(request, "END").as_numpy().astype(np.int32)
            output = np.where(ready == 1, value + start, 0).astype(np.int32)
            total = np.zeros_like(value)
            if int(ready.flat[0]) == 1:
                key = request.correlation_id()
                base = 0 if int(start.flat[0]) == 1 else self.sums.pop(key, 0)
                total = (base + value).astype(np.int32)
                if int(end.flat[0]) == 1:
                    self.sums.pop(key, None)
                else:
                    self.sums[key] = int(total.flat[0])
                    while len(self.sums) > MAX_SEQUENCES:
                        self.sums.popitem(last=False)
            outputs = [pb_utils.Tensor("OUTPUT", output), pb_utils.Tensor("SUM", total)]
            responses.append(pb_utils.InferenceResponse(outputs))
        return responses
