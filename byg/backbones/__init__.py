"""Backbones: one interface (``Backbone``) for the toy models, FLUX and Wan."""

from byg.backbones.base import Backbone, TextEmbeds, cat_text, index_text, repeat_text
from byg.backbones.editor import Editor

__all__ = ["Backbone", "Editor", "TextEmbeds", "cat_text", "index_text", "repeat_text"]
