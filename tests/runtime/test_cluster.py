"""A process finds its place in the cluster as `bytewax.run` does, and its state port from it."""

from __future__ import annotations

import pytest

from flows.runtime.cluster import cluster_processes, process_index, processes_before_on_this_host

ONE_HOST = "127.0.0.1:2101;127.0.0.1:2102;127.0.0.1:2103"


@pytest.mark.parametrize(
    ("argv", "env", "processes", "index", "before"),
    [
        ([], {}, 1, 0, 0),  # a single process
        (["-i", "2", "-a", ONE_HOST], {}, 3, 2, 2),  # three on one host: the third is two ports on
        (["--process-id=1", f"--addresses={ONE_HOST}"], {}, 3, 1, 1),
        ([], {"BYTEWAX_PROCESS_ID": "1", "BYTEWAX_ADDRESSES": ONE_HOST}, 3, 1, 1),
        (["-i", "1", "-a", "pod-0.flow:2101;pod-1.flow:2101"], {}, 2, 1, 0),  # a host each: the port as set
        (["-i", "2", "-a", "a:1;b:1;a:2;b:2"], {}, 4, 2, 1),  # two hosts, two processes each
        (
            [],
            {
                "BYTEWAX_POD_NAME": "serving-1",
                "BYTEWAX_STATEFULSET_NAME": "serving",
                "BYTEWAX_ADDRESSES": "x:1;y:1",
            },
            2,
            1,
            0,
        ),
    ],
)
def test_the_place_in_the_cluster(argv, env, processes, index, before):
    assert cluster_processes(argv, env) == processes
    assert process_index(argv, env) == index
    assert processes_before_on_this_host(argv, env) == before


def test_a_hostfile_lists_the_addresses(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("127.0.0.1:2101\n127.0.0.1:2102\n\n")
    env = {"BYTEWAX_HOSTFILE_PATH": str(hostfile), "BYTEWAX_PROCESS_ID": "1"}
    assert cluster_processes([], env) == 2
    assert processes_before_on_this_host([], env) == 1
