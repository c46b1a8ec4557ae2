"""`cmake --install` puts a working package for Debian's /usr/bin/python3 into a prefix:
the package and extension import from the prefix alone and load the prefix's
libsluice, and the installed sluiced serves them."""

from __future__ import annotations

import os
import subprocess

import textwrap

from conftest import BUILD, Daemon


def test_cmake_install_gives_a_working_package(tmp_path):
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", str(prefix)], check=True,
                   capture_output=True, timeout=120)
    site = prefix / "lib" / "python3" / "dist-packages"
    assert (site / "sluice" / "__init__.py").exists() and (prefix / "include" / "sluice.h").exists()
    d = Daemon(tmp_path)
    try:
        script = textwrap.dedent(f"""
            import sluice, _sluice
            assert sluice.__file__.startswith({str(site)!r}), sluice.__file__
            assert _sluice.__file__.startswith({str(site)!r}), _sluice.__file__
            libs = [l.split()[-1] for l in open("/proc/self/maps") if "libsluice" in l]
            assert libs and all(p.startswith({str(prefix)!r}) for p in libs), libs
            with sluice.Client({d.segment!r}) as c:
                assert c.acquire("k", "pro").allowed
            print("ok")
        """)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
        env["PYTHONPATH"] = str(site)
        out = subprocess.run(["/usr/bin/python3", "-c", script], env=env, capture_output=True, text=True,
                             timeout=60, cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    finally:
        d.stop()
    installed = subprocess.run([str(prefix / "bin" / "sluiced"), "--print-default-policy"],
                               capture_output=True, text=True, timeout=30)
    assert installed.returncode == 0 and "enterprise" in installed.stdout
    # The `sluice` command runs the installed package and finds the installed binaries.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SLUICE_BIN_DIR", "LD_LIBRARY_PATH")}
    launcher = prefix / "bin" / "sluice"
    assert (prefix / "bin" / "sluice-trace").exists()
    probe = subprocess.run([str(launcher), "demo", "--help"], capture_output=True, text=True, timeout=60, env=env,
                           cwd=tmp_path)
    assert probe.returncode == 0 and "--duration" in probe.stdout, probe.stderr
    assert launcher.read_text().count(str(prefix)) == 2, launcher.read_text()  # PYTHONPATH, SLUICE_BIN_DIR


def test_a_staged_install_puts_the_launcher_under_destdir(tmp_path):
    """DESTDIR (packaging): every file under the stage, the launcher naming the real prefix."""
    stage = tmp_path / "stage"
    env = dict(os.environ, DESTDIR=str(stage))
    subprocess.run(["cmake", "--install", str(BUILD), "--prefix", "/opt/sluice-test"], check=True,
                   capture_output=True, timeout=120, env=env)
    launcher = stage / "opt" / "sluice-test" / "bin" / "sluice"
    assert launcher.exists() and (stage / "opt" / "sluice-test" / "bin" / "sluiced").exists()
    assert launcher.read_text().count("/opt/sluice-test/") == 2 and str(stage) not in launcher.read_text()
    assert not os.path.exists("/opt/sluice-test")
