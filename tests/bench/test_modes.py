"""`orders bench --sweep` and `orders bench --read-path` on a throw-away stack each, as short as
they can be while measuring something: the report's structure and its sanity (every order ended,
bytes counted, every request sent answered and counted by the gateway too). Never timings."""

from __future__ import annotations

import json

import pytest

from cli.main import main


@pytest.mark.timeout(300)
def test_a_two_point_sweep_reports_each_point_and_where_it_bends(tmp_path, capsys):
    out = tmp_path / "sweep.json"
    argv = ["bench", "--sweep", "--sweep-levels", "1,3", "--sweep-sizes", "2", "--sweep-point-duration", "3"]
    assert main([*argv, "--drain-timeout", "90", "--json", str(out)]) == 0
    report = json.loads(out.read_text())["sweep"]
    assert [(p["lines"], p["concurrency"]) for p in report["points"]] == [(2, 1), (2, 3)]
    for point in report["points"]:
        assert point["orders_ended"] > 0 and point["orders_unfinished"] == 0
        assert point["http_5xx_not_503_with_retry_after"] == 0
        assert point["history_bytes_per_order"] > 0 and point["temporal"]["history_events"] > 0
        storage = point["storage"]
        assert storage["row_bytes_per_order"]["orders"] > 0 and storage["row_bytes_per_order"]["order_events"] > 0
        assert point["read_model_row_bytes_per_order"] >= storage["row_bytes_per_order"]["orders"]
        assert storage["read_model_on_disk_bytes_per_order"] > 0
        # Each order reserved its two lines: two reservation rows per order.
        assert storage["row_bytes_per_order"]["stock_reservations"] > 0
        assert point["platform_cpu_ms_per_order"] > 0 and set(point["cpu_ms_per_order"]) >= {
            "api",
            "temporal",
            "worker-1",
        }
    assert set(report["bends"]) == {"2"} and report["bends"]["2"]["text"]
    assert out.with_suffix(".png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "== sweep:" in printed and "2 line(s):" in printed


@pytest.mark.timeout(300)
def test_the_read_path_answers_and_counts_every_request_it_was_sent(tmp_path, capsys):
    out = tmp_path / "reads.json"
    argv = ["bench", "--read-path", "--read-seed", "200", "--read-per-customer", "20", "--read-rates", "20"]
    assert main([*argv, "--read-duration", "3", "--json", str(out)]) == 0
    report = json.loads(out.read_text())["reads"]
    assert report["seeded_orders"] == 200 and report["customers"] == 10 and report["template_orders"] > 0
    (point,) = report["rates"]
    assert point["sent"] == 60 and point["answered"] == point["sent"] and point["statuses"] == {"200": 60}
    # The gateway's own /metrics counted the same requests, route by route.
    assert sum(point["gateway_counted"].values()) == point["sent"]
    assert point["gateway_counted"]["GET /v1/orders/{id}"] == point["latency_ms"]["GET /v1/orders/{id}"]["n"]
    assert point["gateway_cpu_ms_per_request"] > 0
    assert "== read path:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sweep", "--sweep-sizes", "101"], "--sweep-sizes must be between 1 and 100"),
        (["--sweep", "--sweep-levels", "8,x"], "--sweep-levels must be whole numbers"),
        (["--sweep", "--url", "http://127.0.0.1:8000"], "--sweep starts its own stack"),
        (["--sweep", "--read-path"], "give one"),
        (["--read-path", "--read-list-share", "2"], "--read-list-share must be between 0 and 1"),
        (["--read-path", "--read-rates", "0"], "--read-rates must be between 1"),
        (["--read-path", "--read-per-customer", "0"], "--read-per-customer must be between 1"),
    ],
)
def test_bad_sweep_and_read_path_options_get_one_line(argv, message, capsys):
    assert main(["bench", *argv]) == 2
    assert message in capsys.readouterr().err
