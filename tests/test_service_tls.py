"""The recommend service's HTTP layer on its own (uvicorn in a thread of this process, 127.0.0.1, a free port): HTTPS
with a certificate generated at run time, the bearer token over TLS, a service whose dependencies are all down
still starts, answers /healthz, and says in /readyz and in a 503 which dependency is missing."""

from __future__ import annotations

import datetime as dt
import ipaddress
import secrets
import threading
import time
from pathlib import Path

import pytest
import requests
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from components.serving.recommend import RecommendConfig
from components.serving.service import ServiceSettings, create_app, parse_request
from components.serving.triton import free_port


def _self_signed(tmp: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    (tmp / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return tmp / "tls.crt", tmp / "tls.key"


@pytest.fixture
def tls_service(tmp_path):
    cert, key = _self_signed(tmp_path)
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "preprocess.json").write_text(
        '{"dense": {"names": [], "mean": []}, "sparse": {"names": []}, "surfaces": ["homefeed"], "tasks": ["save"], '
        '"dims": {"d_user": 4, "d_pin": 4}}')
    cfg = RecommendConfig(feature_repo=tmp_path / "no_repo", milvus_uri=str(tmp_path / "no_milvus.db"),
                          triton_url=f"127.0.0.1:{free_port()}", preprocess=tmp_path / "export", triton_timeout_s=2)
    token, port = secrets.token_urlsafe(24), free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(ServiceSettings(cfg, token=token, concurrency=2)),
                                           host="127.0.0.1", port=port, log_level="warning", ssl_certfile=str(cert),
                                           ssl_keyfile=str(key)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.05)
    yield {"url": f"https://127.0.0.1:{port}", "token": token, "cert": str(cert), "milvus": cfg.milvus_uri}
    server.should_exit = True
    thread.join(120)
    assert not thread.is_alive()


def test_https_token_and_dependencies_down(tls_service):
    url, cert = tls_service["url"], tls_service["cert"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(url + "/healthz", timeout=10)  # not trusted without the certificate
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(url.replace("https", "http") + "/healthz", timeout=10)  # no plain HTTP on a TLS port
    assert requests.get(url + "/healthz", verify=cert, timeout=10).json() == {"status": "ok"}
    r = requests.post(url + "/v1/recommend", json={"user_id": 1}, verify=cert, timeout=10)
    assert r.status_code == 401
    r = requests.post(url + "/v1/recommend", json={"user_id": 1}, verify=cert, timeout=10,
                      headers={"Authorization": f"Bearer {tls_service['token']}x"})
    assert r.status_code == 401
    ready = requests.get(url + "/readyz", verify=cert, timeout=180)
    assert ready.status_code == 503 and set(ready.json()["not_ready"]) == {"feast", "milvus", "triton"}
    assert "no Milvus Lite database" in ready.json()["dependencies"]["milvus"]
    r = requests.post(url + "/v1/recommend", json={"user_id": 1, "k": 3}, verify=cert, timeout=60,
                      headers={"Authorization": f"Bearer {tls_service['token']}"})
    assert r.status_code == 503 and tls_service["milvus"] in r.json()["message"]
    assert not Path(tls_service["milvus"]).exists()  # a missing Milvus Lite path is never created
    metrics = requests.get(url + "/metrics", verify=cert, timeout=10).text
    assert 'homefeed_request_errors_total{error_class="unauthorized"} 2.0' in metrics
    assert 'homefeed_dependency_up{dependency="milvus"} 0.0' in metrics


def test_parse_request_defaults_and_errors():
    assert parse_request(b'{"user_id": 5}', 20, 500) == {"user_id": 5, "k": 20, "candidates": 500,
                                                          "surface": "homefeed", "exclude": []}
    for body, field in ((b'{"user_id": 1, "exclude": [1, true]}', "exclude"), (b'{"user_id": 1e3}', "user_id"),
                        (b'{"user_id": 99999999999999999999}', "user_id"), (b'"x"', "body"), (b"\xff", "body"),
                        (b'{"user_id": 1, "surface": 3}', "surface")):
        with pytest.raises(ValueError) as e:
            parse_request(body, 20, 500)
        assert e.value.field == field, body
