import jidoka


async def test_create_and_send(client: jidoka.Client) -> None:
    sid = await client.create_session()
    message = await client.send_message(sid, "user", "hello")
    assert message.seq == 3
    assert [m.content for m in await client.get_conversation_history(sid)] == ["hello"]


async def test_add_file(client: jidoka.Client, project) -> None:
    sid = await client.create_session(project_root=str(project))
    active = await client.add_file(sid, "src/app.py")
    assert active.path == "src/app.py"
