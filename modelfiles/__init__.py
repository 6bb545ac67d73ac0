"""Modelfiles and prompt templates: parsing, writing back, option typing, Go and Jinja templates.

Never imports ``runner``.
"""

from .jinja import load_named_template, named_template_for, render_jinja
from .options import (
    DEFAULT_OPTIONS, DEPRECATED_OPTIONS, OPTION_TYPES, RUNNER_OPTIONS, OptionError, format_parameter,
    parse_parameter, validate_options,
)
from .parser import COMMANDS, MESSAGE_ROLES, Modelfile, ModelfileError, format_modelfile, parse_modelfile
from .prompt import TemplateError, parse_template, render

__all__ = [
    "COMMANDS", "DEFAULT_OPTIONS", "DEPRECATED_OPTIONS", "MESSAGE_ROLES", "Modelfile", "ModelfileError",
    "OPTION_TYPES", "OptionError", "RUNNER_OPTIONS", "TemplateError", "format_modelfile", "format_parameter",
    "load_named_template", "named_template_for", "parse_modelfile", "parse_parameter", "parse_template",
    "render", "render_jinja", "validate_options",
]
