"""The one error type of the template packages."""


class TemplateError(ValueError):
    """A template failed to parse or to execute; the message reads like Go's text/template error."""
