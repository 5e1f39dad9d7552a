"""`egen web user add|list|remove|passwd` run as processes against a real egen and
Postgres, as an operator runs them: the password comes from stdin, the user can sign in,
a new password ends their sessions, and bad input is refused with a clear message and
leaves the users as they were."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest

from tests.webfixtures import ADMIN, browser, web_app

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


async def egen(config: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from daemon.cli.dispatch import main; sys.exit(main())",
        *args, "--config", str(config), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_user_verbs_add_list_passwd_and_remove(pg_url: str, tmp_path: Path) -> None:
    async with web_app(tmp_path, pg_url) as app:
        config = tmp_path / "egen.toml"
        rc, out, err = await egen(config, "web", "user", "add", "carol", "--admin",
                                  stdin="carol-pass\n")
        assert (rc, out) == (0, "user carol added (admin)\n"), err
        async with browser(app, signed_in=None) as client:
            assert (await client.sign_in("carol", "carol-pass"))[0] == 303
            rc, out, _ = await egen(config, "web", "user", "list", "--json")
            users = {u["name"]: u for u in orjson.loads(out)}
            assert rc == 0 and set(users) == {ADMIN, "vic", "carol"}
            assert users["carol"]["admin"] is True and users["carol"]["sessions"] == 1
            assert users[ADMIN]["from_config"] is True

            rc, out, _ = await egen(config, "web", "user", "passwd", "carol",
                                    stdin="carol-new\n")
            assert (rc, out) == (0, "password of carol changed; 1 session ended\n")
            assert (await client.get("/issues"))[0] == 302
            assert (await client.sign_in("carol", "carol-pass"))[0] == 200
            assert (await client.sign_in("carol", "carol-new"))[0] == 303

        rc, out, _ = await egen(config, "web", "user", "remove", "carol")
        assert (rc, out) == (0, "user carol removed\n")
        rc, out, _ = await egen(config, "web", "user", "list")
        assert rc == 0 and "carol" not in out and ADMIN in out


@pytest.mark.parametrize(("args", "stdin", "says"), [
    (("add", "bad name!"), "pw\n", "not a usable user name"),
    (("add", "dave"), "\n", "password: must not be empty"),
    (("add", ADMIN), "pw\n", "exists already"),
    (("remove", "nobody"), "", "no user named 'nobody'"),
    (("remove", ADMIN), "", "kept in the config"),
    (("passwd", ADMIN), "pw\n", "kept in the config"),
    (("passwd", "nobody"), "pw\n", "no user named 'nobody'")])
async def test_bad_user_verbs_say_why_and_change_nothing(
        pg_url: str, tmp_path: Path, args: tuple[str, ...], stdin: str, says: str) -> None:
    async with web_app(tmp_path, pg_url) as app:
        pool = app.database.db.pool
        before = [dict(r) for r in await pool.fetch(
            "SELECT name, password_hash, admin FROM web_users ORDER BY name")]
        rc, out, err = await egen(tmp_path / "egen.toml", "web", "user", *args, stdin=stdin)
        assert rc == 1 and out == ""
        assert says in err, err
        after = [dict(r) for r in await pool.fetch(
            "SELECT name, password_hash, admin FROM web_users ORDER BY name")]
        assert after == before
