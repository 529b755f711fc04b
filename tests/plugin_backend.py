"""Third-party backends for tests/test_backend_plugins.py, named in configs as ``plugin_backend:EchoBackend``
(pytest puts tests/ on sys.path: there is no tests/__init__.py)."""

from router_training.backends import Answer, payload_bytes


class EchoBackend:
    """Answers each question with ``prefix`` + the question's last word and the image's width."""

    def __init__(self, name: str, prefix: str, confidence: float = 0.5):
        self.name, self.prefix, self.confidence = name, prefix, confidence

    def answer(self, images, questions):
        return [Answer(f"{self.prefix}{q.split()[-1]} {im.width}", self.confidence, 0.001, payload_bytes(im, q))
                for im, q in zip(images, questions)]


class AnyOptionsBackend:
    """Takes any options (``**kwargs``) and answers with them."""

    def __init__(self, name, **options):
        self.name, self.options = name, options

    def answer(self, images, questions):
        return [Answer(repr(sorted(self.options.items())), 1.0, 0.0, 0) for _ in questions]


NOT_A_CLASS = 42
