"""Statistics from several workers merge into one response per model and version."""

from __future__ import annotations

from tritonclient.grpc import service_pb2

from dynamo_triton.runtime.statistics import merge_statistics


def stats(name: str, count: int, success_ns: int, last: int, batch1: int) -> service_pb2.ModelStatisticsResponse:
    response = service_pb2.ModelStatisticsResponse()
    entry = response.model_stats.add(name=name, version="1", inference_count=count, execution_count=count)
    entry.last_inference = last
    entry.inference_stats.success.count = count
    entry.inference_stats.success.ns = success_ns
    entry.batch_stats.add(batch_size=1).compute_infer.count = batch1
    return response


def test_counters_add_up_and_last_inference_is_the_latest() -> None:
    merged = merge_statistics([stats("a", 3, 300, 10, 3), stats("a", 4, 400, 20, 4), stats("b", 1, 5, 1, 1)])
    assert [m.name for m in merged.model_stats] == ["a", "b"]
    a = merged.model_stats[0]
    assert a.inference_count == 7
    assert a.execution_count == 7
    assert a.inference_stats.success.count == 7
    assert a.inference_stats.success.ns == 700
    assert a.last_inference == 20
    assert len(a.batch_stats) == 1
    assert a.batch_stats[0].batch_size == 1
    assert a.batch_stats[0].compute_infer.count == 7


def test_keep_filters_models() -> None:
    merged = merge_statistics([stats("a", 1, 1, 1, 1), stats("b", 1, 1, 1, 1)], keep={"b"})
    assert [m.name for m in merged.model_stats] == ["b"]


def test_the_ledger_keeps_a_departed_instances_last_report() -> None:
    from dynamo_triton.runtime.statistics import StatisticsLedger

    ledger = StatisticsLedger()
    ledger.record("worker-a", stats("a", 3, 300, 10, 3))
    ledger.record("worker-b", stats("a", 4, 400, 20, 4))
    before = ledger.total().model_stats[0].inference_count
    ledger.record("worker-b", stats("a", 6, 600, 30, 6))  # worker-a left: it reports no more
    after = ledger.total()
    assert before == 7
    assert after.model_stats[0].inference_count == 9 >= before
    assert ledger.total(keep={"b"}).model_stats == []
