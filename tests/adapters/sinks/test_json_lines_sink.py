"""The results file sink: what a crash mid-write leaves behind must not break the file."""

import json

from support.core_runs import messages, sample_records

from flows.adapters.sinks.json_lines import JsonLinesResultSink
from flows.core.scoring import unscored


def test_restart_cuts_a_torn_last_line_before_appending(tmp_path):
    path = tmp_path / "results-0.jsonl"
    path.write_text('{"complete": true}\n{"torn": ')  # what SIGKILL during a write can leave
    partition = JsonLinesResultSink(tmp_path).build("out", 0, 1)
    partition.write_batch([[unscored(message, "no model") for message in messages(sample_records(2))]])
    partition.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"complete": True}
    assert len(lines) == 3
    assert all(json.loads(line)["modelResultMetadata"]["errors"] == "no model" for line in lines[1:])
