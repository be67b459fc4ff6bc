"""The OpenAI-compatible server with the plugin: ``python -m vllm.entrypoints.openai.api_server``
(``vllm serve`` looks up a distribution named "vllm", which vLLM's CPU build is not) on
127.0.0.1, a chat completion with a video given by ``file://`` and as base64, the prompt token
count equal to the exact budget, the server stopped by its pid. A bad setting stops start-up
with the error ``stop_fast.prune`` raises. Every wait is bounded.
"""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch
from transformers import AutoTokenizer

import tiny_models as TM
import vllm_case as V
from stop_fast import prune, token_budget

START_LIMIT_S = 300
FRAMES = 4                     # frames the server samples from the clip


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(ckpt, port, settings, media_dir):
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", ckpt,
            "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
            "--distributed-executor-backend", "uni", "--max-model-len", "1024", "--skip-mm-profiling",
            "--limit-mm-per-prompt", json.dumps({"video": 1, "image": 0}),
            "--allowed-local-media-path", str(media_dir),
            "--media-io-kwargs", json.dumps({"video": {"num_frames": FRAMES}}),
            "--additional-config", json.dumps({"stop_fast": settings})]


class Server:
    def __init__(self, ckpt, settings, media_dir, log):
        self.port = _port()
        self.log = open(log, "w+")
        self.proc = subprocess.Popen(_command(ckpt, self.port, settings, media_dir), stdout=self.log,
                                     stderr=subprocess.STDOUT, env=dict(os.environ))

    def wait_ready(self) -> bool:
        """True once /health answers; False when the process exited first."""
        deadline = time.monotonic() + START_LIMIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"the server did not start within {START_LIMIT_S} s:\n{self.output()[-3000:]}")

    def chat(self, ckpt, url):
        body = {"model": ckpt, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "video_url", "video_url": {"url": url}},
            {"type": "text", "text": "what happens in the video ?"}]}]}
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}/v1/chat/completions",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)     # by its pid
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        self.log.close()


def _text_tokens(ckpt) -> int:
    tok = AutoTokenizer.from_pretrained(ckpt)
    ids = tok.apply_chat_template([{"role": "user", "content": [
        {"type": "video"}, {"type": "text", "text": "what happens in the video ?"}]}],
        add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    return len(ids) - 1                                     # without the one video placeholder


@pytest.mark.parametrize("family,method", [("llava", "holitom"), ("qwen", "visionzip")])
def test_chat_completion_prompt_holds_the_budget(checkpoints, tmp_path, family, method):
    ckpt = checkpoints[family]
    clip = TM.write_mp4(tmp_path / "clip.mp4", TM.frames(12, 112, 112))
    settings = {"method": method, "retention_ratio": 0.2}
    server = Server(ckpt, settings, tmp_path, tmp_path / "server.log")
    try:
        assert server.wait_ready(), server.output()[-3000:]
        groups = FRAMES if family == "llava" else FRAMES // 2     # Qwen: 2 frames per group
        B = token_budget(method, groups, V.N, 0.2)
        want = _text_tokens(ckpt) + B + (1 if family == "llava" else 0)
        data = base64.b64encode(clip.read_bytes()).decode()
        for url in (f"file://{clip}", f"data:video/mp4;base64,{data}"):
            reply = server.chat(ckpt, url)
            assert reply["usage"]["prompt_tokens"] == want, reply
            assert reply["usage"]["completion_tokens"] >= 1
    finally:
        server.stop()
    assert server.proc.returncode is not None


def test_bad_setting_stops_start_up(checkpoints, tmp_path):
    with pytest.raises(ValueError) as want:
        prune(torch.rand(2, 196, 4), torch.rand(2, 196), method="holitom", retention_ratio=1.5)
    server = Server(checkpoints["llava"], {"method": "holitom", "retention_ratio": 1.5}, tmp_path,
                    tmp_path / "server.log")
    try:
        assert not server.wait_ready()
        assert server.proc.wait(timeout=60) != 0
        assert str(want.value) in server.output()
    finally:
        server.stop()
