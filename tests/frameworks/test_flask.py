"""A Flask-SQLAlchemy app enqueues in `db.session`'s transaction; a real worker sends what it committed."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from tests.support import CHATBOT, wait_until

pytest.importorskip("flask_sqlalchemy")


def make_app(database_url: str, producer: Any) -> Any:
    from flask import Flask, abort, request
    from flask_sqlalchemy import SQLAlchemy

    from oaksend import ValidationError

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    db = SQLAlchemy(app)

    class Visit(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "visit"
        id = db.Column(db.Integer, primary_key=True)
        phone = db.Column(db.String(20), nullable=False)

    @app.post("/visits")
    def book() -> Any:
        visit = Visit(phone=request.form["phone"])
        db.session.add(visit)
        db.session.flush()
        try:
            producer.send(CHATBOT, visit.phone, "See you at 10:00", idempotency_key=f"visit-{visit.id}",
                          session=db.session)
        except ValidationError as exc:
            db.session.rollback()
            abort(400, str(exc))
        if request.form.get("fail"):
            db.session.rollback()  # the request failed after enqueueing: nothing of it stays
            abort(500)
        db.session.commit()
        return {"visit": visit.id}, 201

    with app.app_context():
        db.drop_all()
        db.create_all()
    app.extensions["visit_model"] = Visit
    app.extensions["oaksend_test_db"] = db
    return app


def test_flask_requests_commit_or_roll_back_their_message(database_url: str, producer: Any, outbox: Any,
                                                          make_stack: Any, sandbox: Any) -> None:
    app = make_app(database_url, producer)
    client = app.test_client()
    assert client.post("/visits", data={"phone": "+14155550111"}).status_code == 201
    assert client.post("/visits", data={"phone": "+14155550112", "fail": "1"}).status_code == 500
    assert client.post("/visits", data={"phone": "+14155550113"}).status_code == 201
    assert client.post("/visits", data={"phone": "not a number"}).status_code == 400
    from oaksend.models.tables import Message

    with outbox.session() as s:
        phones = sorted(s.scalars(select(Message.to_phone)))
    assert phones == ["+14155550111", "+14155550113"]
    make_stack(workers=1)
    wait_until(lambda: len(sandbox.requests()) >= 2, 30, what="both committed messages to reach the API")
    assert sorted(r["to_phone_number"] for r in sandbox.requests()) == phones
    with app.app_context():
        app.extensions["oaksend_test_db"].engine.dispose()  # its pooled connections, closed
