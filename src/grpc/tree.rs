//! Builds nested trees from a flat subtree listing (any order), children by name.

use std::collections::HashMap;

use uuid::Uuid;

/// A node with its children.
pub struct Node<T> {
    pub item: T,
    pub children: Vec<Node<T>>,
}

/// Nests `items`: an item whose parent is not among them becomes a top node. Siblings
/// are ordered by `name`, then id.
pub fn nest<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> Uuid,
    parent: impl Fn(&T) -> Option<Uuid>,
    name: impl Fn(&T) -> &str,
) -> Vec<Node<T>> {
    let index: HashMap<Uuid, usize> = items.iter().enumerate().map(|(i, t)| (id(t), i)).collect();
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); items.len()];
    let mut tops = Vec::new();
    for (i, t) in items.iter().enumerate() {
        match parent(t).and_then(|p| index.get(&p)) {
            Some(&p) => children[p].push(i),
            None => tops.push(i),
        }
    }
    let sort = |list: &mut Vec<usize>| {
        list.sort_by(|&a, &b| {
            name(&items[a])
                .cmp(name(&items[b]))
                .then(id(&items[a]).cmp(&id(&items[b])))
        })
    };
    sort(&mut tops);
    for list in &mut children {
        sort(list);
    }
    let mut slots: Vec<Option<T>> = items.into_iter().map(Some).collect();
    fn build<T>(i: usize, slots: &mut [Option<T>], children: &[Vec<usize>]) -> Node<T> {
        let item = slots[i].take().expect("each node is built once");
        let kids = children[i]
            .iter()
            .map(|&c| build(c, slots, children))
            .collect();
        Node {
            item,
            children: kids,
        }
    }
    tops.into_iter()
        .map(|i| build(i, &mut slots, &children))
        .collect()
}
