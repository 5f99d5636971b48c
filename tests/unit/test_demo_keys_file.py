"""`make run` writes its demo keys to a file only its owner can read, which a shell sources."""

import os
import stat
import subprocess

from ops import stack


def test_demo_keys_file_is_private_and_sourceable(tmp_path, monkeypatch):
    cfg = stack.config("run")
    monkeypatch.setattr(type(cfg), "state_dir", property(lambda self: tmp_path), raising=False)
    path = stack.write_demo_keys(cfg, {"client-A": "exk_a-1", "client-B": "exk_b_2", "admin": "exk_c"})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    out = subprocess.run(["sh", "-c", f'. "{path}" && echo "$A $B $ADMIN $EXCHANGE_URL"'], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["exk_a-1", "exk_b_2", "exk_c", cfg.gateway_url]
